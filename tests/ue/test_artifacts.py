"""Atomic writes leave either the old or the new content, never a partial one; the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from ue.artifacts import Manifest, RunLayout, atomic_directory, atomic_write_json, read_json


def test_atomic_directory_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "heads" / "alien"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "v1"
    assert [p.name for p in target.parent.iterdir()] == ["alien"]  # no temp left behind


def test_atomic_json_and_corrupt_file_message(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert read_json(tmp_path / "x.json") == {"a": 1}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_manifest_tracks_stage_status_and_config_hash(tmp_path):
    layout = RunLayout(tmp_path, "r1")
    m = Manifest(layout)
    assert not m.is_done("extract")
    m.update("extract", status="running", config_hash="abc")
    assert not m.is_done("extract")
    m.update("extract", status="failed", error="boom")
    m.update("extract", status="done", error=None)
    assert "error" not in m.stage("extract")
    assert m.is_done("extract", "abc") and not m.is_done("extract", "other")
    assert read_json(layout.manifest)["versions"]["torch"]
    with pytest.raises(ValueError, match="plain"):
        RunLayout(tmp_path, "../escape")


HOLD = """
import sys, time
from ue.artifacts import run_lock
with run_lock(sys.argv[1], holder="stage score of run r"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(run_dir):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_with_the_holder_and_a_crashed_holder_frees_the_run(tmp_path):
    import signal

    from ue.artifacts import RunLocked, run_lock

    proc = _holder(tmp_path / "r")
    try:
        with pytest.raises(RunLocked, match=rf"stage score of run r \(pid {proc.pid} on .*, since "), \
                run_lock(tmp_path / "r", holder="another"):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The kernel dropped the dead holder's lock; a stage inside the same process re-enters it.
    with run_lock(tmp_path / "r", holder="after the crash"), run_lock(tmp_path / "r", holder="a stage"):
        assert "after the crash" in (tmp_path / "r" / ".lock").read_text()


def test_a_stage_on_a_run_another_process_holds_changes_nothing(tmp_path):
    from jobs._common import run_stage
    from ue.artifacts import Manifest, RunLocked
    from ue.config import RunConfig

    class Cfg:
        run = RunConfig(root=str(tmp_path), run_id="r")

    proc = _holder(tmp_path / "r")
    try:
        with pytest.raises(RunLocked, match="is in use"):
            run_stage("score", Cfg(), lambda layout: {"wrote": True})
    finally:
        proc.kill()
        proc.wait()
    assert Manifest(RunLayout(tmp_path, "r")).read().get("stages", {}) == {}
