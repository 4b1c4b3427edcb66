"""The README's reliability table names, for each promise, tests that exist (a renamed or deleted test
would leave a promise unbacked)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _named_tests() -> list[tuple[str, str | None]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Reliability: what is promised", 1)[1].split("\n## ", 1)[0]
    named: list[tuple[str, str | None]] = []
    for row in (line for line in table.splitlines() if line.startswith("| ") and "`" in line):
        current = None
        for ref in re.findall(r"`([^`]+)`", row.rsplit(" | ", 1)[1]):
            file, _, test = ref.partition("::")
            if file.endswith(".py"):
                current = file
            if current is None:
                continue
            named.append((current, test or None))
    return named


def test_every_promise_names_tests_that_exist():
    named = _named_tests()
    assert len(named) >= 25
    for file, test in named:
        path = ROOT / file
        assert path.is_file(), file
        if test is not None:
            assert re.search(rf"^def {re.escape(test)}\(", path.read_text(encoding="utf-8"), re.M), f"{file}::{test}"
