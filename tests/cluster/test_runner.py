"""Embedded mode: stages in order, skip what is done, retry with backoff, survive a killed driver."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.pipeline import load_pipeline
from cluster.runner import StageFailed, run_embedded
from tests.cluster.helpers import LAUNCH, ROOT, arm_sigint, ue, write_pipeline
from tests.cluster.toy import runs_of


def _run(path: Path, overrides=(), sleeps: list[float] | None = None):
    sleeps = [] if sleeps is None else sleeps
    return run_embedded(load_pipeline(path, overrides), verbose=True, sleep=sleeps.append)


def test_retries_with_backoff_then_skips_done_stages(tmp_path: Path):
    path = write_pipeline(tmp_path / "p.yaml", "e1", tmp_path, [
        {"stage": "toy_a"}, {"stage": "toy_b", "config": {"fail_times": 2}, "retries": 2}, {"stage": "toy_c"}],
        backoff_s=1.5, backoff_factor=2)
    sleeps: list[float] = []
    outcomes = _run(path, sleeps=sleeps)
    assert [(o.stage, o.status, o.attempts) for o in outcomes] == [
        ("toy_a", "done", 1), ("toy_b", "done", 3), ("toy_c", "done", 1)]
    assert sleeps == [1.5, 3.0]

    again = _run(path)
    assert [o.status for o in again] == ["skipped"] * 3
    assert [runs_of(tmp_path, "e1", s) for s in ("toy_a", "toy_b", "toy_c")] == [1, 3, 1]
    manifest = json.loads((tmp_path / "e1" / "manifest.json").read_text())
    assert manifest["pipeline"]["stages"] == ["toy_a", "toy_b", "toy_c"]
    assert manifest["pipeline"]["mode"] == "embedded"


def test_a_changed_config_reruns_that_stage_and_every_later_one(tmp_path: Path):
    path = write_pipeline(tmp_path / "p.yaml", "e2", tmp_path, [{"stage": "toy_a"}, {"stage": "toy_b"},
                                                                 {"stage": "toy_c"}])
    _run(path)
    outcomes = _run(path, ["toy_b.message=changed"])
    assert [o.status for o in outcomes] == ["skipped", "done", "done"]  # toy_c read what toy_b made
    assert [runs_of(tmp_path, "e2", s) for s in ("toy_a", "toy_b", "toy_c")] == [1, 2, 2]
    manifest = json.loads((tmp_path / "e2" / "manifest.json").read_text())
    assert manifest["stages"]["toy_c"]["status"] == "done"


def test_a_stage_failing_every_attempt_stops_the_pipeline(tmp_path: Path):
    path = write_pipeline(tmp_path / "p.yaml", "e3", tmp_path, [
        {"stage": "toy_a", "config": {"fail_times": 9}, "retries": 1}, {"stage": "toy_b"}])
    with pytest.raises(StageFailed) as info:
        _run(path)
    assert (info.value.stage, info.value.attempts) == ("toy_a", 2)
    assert runs_of(tmp_path, "e3", "toy_b") == 0
    manifest = json.loads((tmp_path / "e3" / "manifest.json").read_text())
    assert manifest["stages"]["toy_a"]["status"] == "failed"


def test_a_stage_that_cannot_be_imported_is_a_failed_attempt(tmp_path: Path):
    path = write_pipeline(tmp_path / "p.yaml", "e6", tmp_path, [{"stage": "toy_missing", "retries": 1}])
    sleeps: list[float] = []
    with pytest.raises(StageFailed, match="ModuleNotFoundError") as info:
        _run(path, sleeps=sleeps)
    assert info.value.attempts == 2 and sleeps == [0.1]


def test_ue_run_failure_shows_the_log_tail_and_exits_1(tmp_path: Path, env: dict):
    path = write_pipeline(tmp_path / "p.yaml", "e4", tmp_path, [
        {"stage": "toy_a", "config": {"fail_times": 9, "message": "marker-in-the-log"}, "retries": 0}])
    proc = ue("run", str(path), env=env)
    assert proc.returncode == 1
    assert "marker-in-the-log" in proc.stdout  # the captured stage output, shown on failure
    assert "toy_a fails on purpose" in proc.stderr and "e4-toy_a-1.log" in proc.stderr
    logs = ue("logs", "e4", "--local", "--root", str(tmp_path), env=env)
    assert "marker-in-the-log" in logs.stdout


def _manifest_status(path: Path, stage: str) -> str | None:
    try:
        return json.loads(path.read_text())["stages"].get(stage, {}).get("status")
    except (OSError, ValueError):
        return None


def test_killing_the_driver_midway_and_rerunning_finishes_the_run(tmp_path: Path, env: dict):
    path = write_pipeline(tmp_path / "p.yaml", "e5", tmp_path, [
        {"stage": "toy_a"}, {"stage": "toy_b", "config": {"seconds": 4}}, {"stage": "toy_c"}])
    driver = subprocess.Popen([sys.executable, "-c", LAUNCH, "run", str(path)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "e5" / "manifest.json"
    try:
        deadline = time.monotonic() + 60
        # Kill once stage 2's body is under way (it has counted its start), not just marked running.
        while _manifest_status(manifest, "toy_b") != "running" or runs_of(tmp_path, "e5", "toy_b") < 1:
            assert driver.poll() is None and time.monotonic() < deadline, "stage 2 never started"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait(timeout=30)
    assert _manifest_status(manifest, "toy_c") is None

    proc = ue("run", str(path), env=env)  # the very same command
    assert proc.returncode == 0, proc.stderr
    assert "toy_a      skipped" in proc.stdout and "toy_b      done" in proc.stdout
    assert [runs_of(tmp_path, "e5", s) for s in ("toy_a", "toy_b", "toy_c")] == [1, 2, 1]
    assert all(_manifest_status(manifest, s) == "done" for s in ("toy_a", "toy_b", "toy_c"))


def test_a_second_ue_run_on_a_busy_run_directory_stops_at_once_and_writes_nothing(tmp_path: Path, env: dict):
    path = write_pipeline(tmp_path / "p.yaml", "busy", tmp_path, [{"stage": "toy_a"}])
    hold = ("import sys, time; from ue.artifacts import run_lock\n"
            "with run_lock(sys.argv[1], holder='ue run other.yaml'):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "busy")], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = ue("run", str(path), env=env)
        assert proc.returncode == 1
        assert "is in use: ue run other.yaml (pid" in proc.stdout + proc.stderr
        assert not (tmp_path / "busy" / "manifest.json").exists() and runs_of(tmp_path, "busy", "toy_a") == 0
    finally:
        holder.kill()
        holder.wait()
    assert [o.status for o in _run(path)] == ["done"]  # free again once the holder is gone


def test_a_stage_that_leaves_sigint_ignored_does_not_disarm_ctrl_c_for_the_next(tmp_path: Path):
    # Armed here whatever the test runner inherited (a background job starts with SIGINT ignored).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        path = write_pipeline(tmp_path / "p.yaml", "sig", tmp_path, [
            {"stage": "toy_a", "config": {"ignore_sigint": True}}, {"stage": "toy_b"}])
        assert [o.status for o in _run(path)] == ["done", "done"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("handler", ["default", "library"])
def test_ctrl_c_stops_the_run_with_130_and_one_line_and_a_rerun_carries_on(tmp_path: Path, env: dict, handler):
    """Whether the stage lets SIGINT raise KeyboardInterrupt or a library's handler aborts and exits 1
    (Ray Train) or raises (Ray Tune), Ctrl-C is no failed attempt to retry: the run stops at once."""
    config = {"seconds": 30, "abort_on_sigint": handler == "library"}
    path = write_pipeline(tmp_path / "p.yaml", "ctrl", tmp_path, [
        {"stage": "toy_a"}, {"stage": "toy_b", "config": config, "retries": 2}, {"stage": "toy_c"}])
    driver = subprocess.Popen([sys.executable, "-c", LAUNCH, "run", str(path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=arm_sigint)
    manifest = tmp_path / "ctrl" / "manifest.json"
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ctrl" / "logs" / "ctrl-toy_b-1.log").exists() or runs_of(tmp_path, "ctrl", "toy_b") < 1:
            assert driver.poll() is None and time.monotonic() < deadline, "stage 2 never started"
            time.sleep(0.05)
        time.sleep(0.5)  # the toy's own handler is in place
        started = time.monotonic()
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=30)
    finally:
        driver.kill()
    assert driver.returncode == 130 and time.monotonic() - started < 10
    assert err.strip().splitlines()[-1] == "error: interrupted; rerun the same command to carry on"
    assert "toy_b      interrupted" in out and "retrying" not in out
    assert runs_of(tmp_path, "ctrl", "toy_b") == 1 and runs_of(tmp_path, "ctrl", "toy_c") == 0
    assert _manifest_status(manifest, "toy_b") == "interrupted"

    proc = ue("run", str(path), "toy_b.seconds=0", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [runs_of(tmp_path, "ctrl", s) for s in ("toy_a", "toy_b", "toy_c")] == [1, 2, 1]
