"""`cluster` stays light: `ue --help` and `ue status` must start in well under a second (DESIGN.md)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from tests.cluster.helpers import ROOT

HEAVY = ("torch", "ray", "transformers", "pyarrow", "pydantic", "matplotlib")
# CPU time, not wall time: it does not grow when other processes load the machine.
CPU_BUDGET_S = 0.6


def test_importing_the_cli_imports_nothing_heavy():
    code = ("import json, sys, time; c = time.process_time(); w = time.perf_counter(); import cluster.cli; "
            "print(json.dumps({'cpu': time.process_time() - c, 'wall': time.perf_counter() - w, "
            f"'heavy': sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))}}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    print(f"import cluster.cli: {result['cpu']:.3f}s CPU, {result['wall']:.3f}s wall")
    assert result["heavy"] == []
    assert result["cpu"] < CPU_BUDGET_S


def _cpu_seconds_of(args: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), wall, proc


def test_help_and_status_start_fast(tmp_path: Path):
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps(
        {"run_id": "r1", "stages": {"report": {"status": "done", "seconds": 1.5}}}))
    for args in (["--help"], ["status", "--root", str(tmp_path)], ["status", "r1", "--root", str(tmp_path)]):
        cpu, wall, proc = _cpu_seconds_of(args)
        print(f"ue {' '.join(args)}: {cpu:.3f}s CPU (interpreter start included), {wall:.3f}s wall")
        assert proc.returncode == 0, proc.stderr
        assert cpu < CPU_BUDGET_S + 0.3  # + the interpreter's own start-up
    assert "report" in proc.stdout and "done" in proc.stdout
