"""Helpers of the driver-side tests: a `ue` subprocess with the toy stages, pipelines, a clean env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAY_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
# `ue` with the toy stages registered, as a user would run it (a fresh process, the real console script).
LAUNCH = "import tests.cluster.toy as t; t.register(); from cluster.cli import app; app(prog_name='ue')"


def clean_env(home: Path, state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RAY_VARS}
    env.update(HOME=str(home), UE_STATE_DIR=str(state), PYTHONPATH=str(ROOT), **extra)
    return env


def ue(*args: str, env: dict[str, str], timeout: float = 180, check: bool = False) -> subprocess.CompletedProcess:
    """Run the `ue` CLI (toy stages registered) in a subprocess from the repo root."""
    proc = subprocess.run([sys.executable, "-c", LAUNCH, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ue {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def arm_sigint() -> None:
    """``preexec_fn`` for a child that must see Ctrl-C: a test runner started as a background job has
    SIGINT ignored, which children inherit (and then Python installs no KeyboardInterrupt handler)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def listeners(pid: int) -> set[tuple[str, str]]:
    """(address, process name) of every listening TCP socket of ``pid`` and its descendants."""
    import psutil

    root = psutil.Process(pid)
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            found |= {(c.laddr.ip, proc.name()) for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def on_loopback(address: str) -> bool:
    return address in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def write_pipeline(path: Path, run_id: str, root: Path, stages: list[dict], **top) -> Path:
    doc = {"run_id": run_id, "root": str(root), "backoff_s": 0.1, **top, "stages": stages}
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


@dataclass(frozen=True)
class Head:
    address: str
    token: str
    env: dict[str, str]
    home: Path
    work: Path
    startup: str
