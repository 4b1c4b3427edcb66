"""The Jobs path end to end on a real head (127.0.0.1, token auth): submit, follow, status, logs,
list, stop, and what happens without the right token. The token must never show up anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.helpers import LAUNCH, ROOT, Head, clean_env, listeners, on_loopback, ue, write_pipeline
from tests.cluster.rundir import make_run_dir
from tests.cluster.toy import runs_of

pytestmark = pytest.mark.slow


def assert_token_nowhere(head: Head, outputs: list[str], *dirs: Path) -> None:
    """Not in any command's stdout/stderr, nor in any file under the run dirs or ue's state dir."""
    assert head.token and head.token not in head.startup
    for text in outputs:
        assert head.token not in text
    for directory in (*dirs, head.work / "state"):
        for path in directory.rglob("*"):
            if path.is_file():
                assert head.token.encode() not in path.read_bytes(), path


def test_submit_follows_to_success_with_status_logs_and_list(local_head: Head, tmp_path: Path):
    root = tmp_path / "runs"
    make_run_dir(root, "s1")  # features + heads, so the real report stage has something to read
    pipeline = write_pipeline(tmp_path / "p.yaml", "s1", root, [
        {"stage": "toy_a", "config": {"message": "job-log-marker"}},
        {"stage": "toy_b", "config": {"fail_times": 1}, "retries": 1},
        {"stage": "report"},
    ])
    proc = ue("submit", str(pipeline), "--address", local_head.address, env=local_head.env, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "submitted s1-toy_a-1" in out and "job-log-marker" in out
    assert "s1-toy_b-1 FAILED" in out and "submitted s1-toy_b-2" in out and "submitted s1-report-1" in out
    assert f"report: {root / 's1' / 'report' / 'report.html'}" in out
    assert (root / "s1" / "report" / "risk_coverage.png").exists()
    assert runs_of(root, "s1", "toy_b") == 2
    assert (root / "s1" / "logs" / "s1-toy_a-1.log").read_text().count("job-log-marker") >= 1

    # The other commands find the head through the state file start-local wrote.
    status = ue("status", "s1", "--root", str(root), "--jobs", env=local_head.env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("SUCCEEDED") == 3 and "FAILED" in status.stdout
    logs = ue("logs", "s1-toy_a-1", env=local_head.env)
    assert logs.returncode == 0 and "job-log-marker" in logs.stdout
    listed = ue("list", env=local_head.env)
    assert "s1-report-1" in listed.stdout

    again = ue("submit", str(pipeline), env=local_head.env, timeout=120)
    assert again.returncode == 0 and again.stdout.count("skipped") == 3
    assert_token_nowhere(local_head, [p.stdout + p.stderr for p in (proc, status, logs, listed, again)], root)


def test_every_service_of_the_local_head_listens_on_loopback_only(local_head: Head):
    """GCS, raylet (node and object manager), workers, dashboard, agents, metrics: `ray start` alone
    put most of them on every interface even with --node-ip-address 127.0.0.1."""
    pid = json.loads((local_head.work / "state" / "local-head.json").read_text())["pid"]
    found = listeners(pid)
    assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= {name for _, name in found}
    assert sorted(f"{name} on {address}" for address, name in found if not on_loopback(address)) == []


def test_stop_ends_a_long_job_and_the_driver_does_not_retry_it(local_head: Head, tmp_path: Path):
    root = tmp_path / "runs"
    pipeline = write_pipeline(tmp_path / "p.yaml", "s2", root, [
        {"stage": "toy_a", "config": {"seconds": 600}, "retries": 3}, {"stage": "toy_b"}])
    driver = subprocess.Popen([sys.executable, "-c", LAUNCH, "submit", str(pipeline), "-q"], cwd=ROOT,
                              env=local_head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        manifest = root / "s2" / "manifest.json"
        deadline = time.monotonic() + 120
        while not (manifest.exists() and json.loads(manifest.read_text())["stages"].get("toy_a")):
            assert driver.poll() is None and time.monotonic() < deadline, "the long job never started"
            time.sleep(0.5)
        stop = ue("stop", "s2", env=local_head.env)
        assert stop.returncode == 0 and "s2-toy_a-1: stop requested" in stop.stdout
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 1 and "stage toy_a was stopped (s2-toy_a-1)" in err
    status = ue("status", "s2", "--root", str(root), "--jobs", env=local_head.env)
    assert "STOPPED" in status.stdout and "s2-toy_a-2" not in status.stdout
    assert runs_of(root, "s2", "toy_b") == 0
    assert_token_nowhere(local_head, [out, err, stop.stdout + stop.stderr, status.stdout + status.stderr], root)


def test_a_missing_or_wrong_token_fails_clearly(local_head: Head, tmp_path: Path):
    root = tmp_path / "runs"
    pipeline = write_pipeline(tmp_path / "p.yaml", "s3", root, [{"stage": "toy_a"}])
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    no_token = clean_env(empty_home, tmp_path / "state")
    missing = ue("submit", str(pipeline), "--address", local_head.address, env=no_token)
    assert missing.returncode == 3
    assert "requires an auth token and none was found" in missing.stderr and "RAY_AUTH_TOKEN" in missing.stderr
    assert missing.stderr.count("error:") == 1 and "Traceback" not in missing.stderr

    wrong_env = {**no_token, "RAY_AUTH_TOKEN": "not-the-token"}
    wrong = ue("submit", str(pipeline), "--address", local_head.address, env=wrong_env)
    assert wrong.returncode == 3 and "rejected the token from $RAY_AUTH_TOKEN" in wrong.stderr
    assert "not-the-token" not in wrong.stdout + wrong.stderr
    status = ue("status", "s3", "--address", local_head.address, env=no_token)
    assert status.returncode == 3

    assert not (root / "s3").exists()  # nothing was submitted
    listed = ue("list", env=local_head.env)
    assert "s3-" not in listed.stdout
    outputs = [p.stdout + p.stderr for p in (missing, wrong, status, listed)]
    assert_token_nowhere(local_head, outputs, root)
