"""Fixtures of the driver-side tests: an isolated HOME, toy stages, a local head.

Nothing here touches the developer's ~/.ray or ~/.ueray: HOME and UE_STATE_DIR point into tmp dirs,
and Ray's own address / token variables are removed from the environment the tests hand down.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import toy
from tests.cluster.helpers import Head, clean_env, ue


@pytest.fixture(autouse=True)
def _toy_stages() -> None:
    toy.register()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(tmp_path: Path, home: Path) -> dict[str, str]:
    return clean_env(home, tmp_path / "state")


@pytest.fixture(scope="module")
def local_head() -> Iterator[Head]:
    """A real Ray head on 127.0.0.1 with token auth, via `ue cluster start-local`; always stopped.

    The temp dir is short because Ray keeps unix sockets there (107-character limit).
    """
    work = Path(tempfile.mkdtemp(prefix="ue-head-", dir="/tmp"))
    home = work / "home"
    home.mkdir()
    env = clean_env(home, work / "state")
    try:
        started = ue("cluster", "start-local", "--num-cpus", "2", "--temp-dir", str(work / "ray"),
                     "--object-store-mb", "100", env=env, timeout=240, check=True)
        state = json.loads((work / "state" / "local-head.json").read_text())
        token = (home / ".ray" / "auth_token").read_text().strip()
        yield Head(state["address"], token, env, home, work, started.stdout + started.stderr)
    finally:
        ue("cluster", "stop-local", env=env, timeout=120)
        _kill_leftovers(work)
        shutil.rmtree(work, ignore_errors=True)


def _kill_leftovers(work: Path) -> None:
    """Belt and braces: if stop-local failed, end the head we started by its recorded pid."""
    import psutil

    path = work / "state" / "local-head.json"
    if not path.exists():
        return
    pid = json.loads(path.read_text())["pid"]
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = [root, *root.children(recursive=True)]
    for proc in family:
        proc.kill()
    psutil.wait_procs(family, timeout=10)
