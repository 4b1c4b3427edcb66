"""Where the token comes from, and that it never shows up in what we print."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cluster.auth import (
    AuthProblem,
    Token,
    ensure_local_token,
    find_token,
    missing_token_message,
    redact,
    rejected_token_message,
)

SECRET = "s3cr3t-t0ken-value"


def test_token_precedence_follows_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert find_token({}) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(f"{SECRET}-file\n")
    assert find_token({}).value == f"{SECRET}-file"
    other = tmp_path / "elsewhere"
    other.write_text(f"{SECRET}-path")
    assert find_token({"RAY_AUTH_TOKEN_PATH": str(other)}).value == f"{SECRET}-path"
    assert find_token({"RAY_AUTH_TOKEN": SECRET, "RAY_AUTH_TOKEN_PATH": str(other)}).source == "$RAY_AUTH_TOKEN"
    with pytest.raises(AuthProblem, match="missing or empty"):
        find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "nope")})


def test_the_value_never_reaches_messages_or_reprs():
    token = Token(SECRET, "$RAY_AUTH_TOKEN")
    shown = [repr(token), str(token), rejected_token_message("http://h:8265", token),
             missing_token_message("http://h:8265")]
    assert not any(SECRET in text for text in shown)
    assert token.headers() == {"Authorization": f"Bearer {SECRET}"}
    assert redact(f"echo {SECRET} twice {SECRET}", token) == "echo <redacted> twice <redacted>"


def test_a_local_token_is_created_private_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    first = ensure_local_token()
    path = tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first.value) == 64
    assert ensure_local_token() == first


def test_a_token_file_others_can_read_is_tightened_with_a_warning(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / ".ray" / "auth_token"
    path.parent.mkdir()
    path.write_text(SECRET)
    path.chmod(0o644)  # as Ray's own start leaves it
    with caplog.at_level("WARNING", logger="ue.auth"):
        assert ensure_local_token().value == SECRET
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "was mode 644" in caplog.text and SECRET not in caplog.text
    caplog.clear()
    ensure_local_token()
    assert not caplog.text  # already private: nothing to say


def test_an_embedded_ray_start_leaves_the_token_file_private(tmp_path: Path):
    """In a subprocess: Ray caches the token it read per process, and this one is a fake for a fake HOME."""
    import os
    import subprocess
    import sys

    path = tmp_path / ".ray" / "auth_token"
    path.parent.mkdir()
    path.write_text(SECRET)
    path.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(tmp_path)}
    code = "import ray; from jobs._common import init_ray; assert init_ray(num_cpus=1); ray.shutdown()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SECRET not in proc.stdout + proc.stderr
