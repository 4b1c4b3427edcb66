"""A real `ue run` of a tiny LoRA fine-tune, stopped by Ctrl-C and by a SIGKILL of the driver.

Ctrl-C reaches Ray Train's own SIGINT handler (a graceful abort ending in ``SystemExit(1)``), yet the
run must stop with exit 130 and one line, and the rerun must resume from the last checkpoint. A
killed driver must leave no Ray process behind (cluster/reaper.py), and nothing of the embedded Ray may
listen beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster.reaper import watch
from tests.cluster.helpers import ROOT, arm_sigint, clean_env, listeners, on_loopback, write_pipeline
from tests.tiny import save_tiny_model

pytestmark = pytest.mark.slow
DATA = Path(os.environ.get("UE_DATA_DIR") or ROOT.parent / "shared" / "data")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interrupts")
    rows = [json.loads(line) for line in (DATA / "sst2" / "train_sentences.jsonl").open()][:1100]
    data = root / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:1000]), encoding="utf-8")
    (data / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[1000:]), encoding="utf-8")
    return {"root": root, "data": data, "model": save_tiny_model(root / "model", "bert", "sequence_classification")}


def _pipeline(setup: dict[str, Path], tmp_path: Path, run_id: str, epochs: int) -> Path:
    config = {
        "data": {"name": str(setup["data"]), "task": "sequence_classification",
                 "splits": {"train": "train", "val": "validation"}, "max_length": 32},
        "model": {"name_or_path": str(setup["model"]), "task": "sequence_classification", "num_labels": 2},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 1e-3},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
    }
    return write_pipeline(tmp_path / "p.yaml", run_id, tmp_path / "runs", [{"stage": "finetune", "config": config}])


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    # A checkpoint is registered right after it is reported, so a stop after epoch 1 keeps it.
    return clean_env(home, tmp_path / "state", HF_HUB_OFFLINE="1", UE_DATA_DIR=str(DATA),
                     RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")


def _start(path: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cluster.cli", "run", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=arm_sigint)


def _wait_for(driver: subprocess.Popen, log: Path, text: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_text(errors="replace")):
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, f"{text!r} never appeared in {log}"
        time.sleep(0.2)


def test_ctrl_c_during_finetune_exits_130_and_the_rerun_resumes(setup: dict[str, Path], tmp_path: Path):
    path, env = _pipeline(setup, tmp_path, "ctrl", epochs=4), _env(tmp_path)
    driver = _start(path, env)
    try:
        _wait_for(driver, tmp_path / "runs" / "ctrl" / "logs" / "ctrl-finetune-1.log", "finetune epoch 1/4")
        time.sleep(1.0)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == "error: interrupted; rerun the same command to carry on"
    assert "finetune   interrupted" in out
    manifest = json.loads((tmp_path / "runs" / "ctrl" / "manifest.json").read_text())
    assert manifest["stages"]["finetune"]["status"] == "interrupted"

    rerun = subprocess.run([sys.executable, "-m", "cluster.cli", "run", str(path)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    metrics = json.loads((tmp_path / "runs" / "ctrl" / "finetune" / "metrics.json").read_text())
    assert metrics["resumed_at_step"] and metrics["resumed_at_step"][0] > 0  # not from scratch
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4]


def test_a_killed_driver_leaves_no_ray_process_behind(setup: dict[str, Path], tmp_path: Path):
    path, env = _pipeline(setup, tmp_path, "kill", epochs=50), _env(tmp_path)
    driver = _start(path, env)
    try:
        _wait_for(driver, tmp_path / "runs" / "kill" / "logs" / "kill-finetune-1.log", "finetune epoch 1/50")
        family = psutil.Process(driver.pid).children(recursive=True)
        names = {p.name() for p in family}
        assert {"raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names
        # The embedded Ray is a single-machine one: none of its services listens beyond loopback. (The
        # one exception is not Ray's: torch.distributed's TCPStore in the Train worker binds every
        # interface, whatever MASTER_ADDR says.)
        wide = [f"{n} on {a}" for a, n in listeners(driver.pid) if not on_loopback(a)]
        assert sorted(w for w in wide if not w.startswith("ray::RayTrainWorker")) == []
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        gone, alive = psutil.wait_procs(family, timeout=30)
    finally:
        driver.kill()
    assert [p.name() for p in alive] == []


def test_the_reaper_ends_the_orphans_of_a_dead_process_and_nothing_older(tmp_path: Path):
    older = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    spawn = ("import subprocess, sys, time\ntime.sleep(1)\n"
             "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
             "print(p.pid, flush=True)\ntime.sleep(60)")
    driver = subprocess.Popen([sys.executable, "-c", spawn], stdout=subprocess.PIPE, text=True)
    killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(3); os.kill({driver.pid}, 9)"])
    try:
        ended = watch(driver.pid, poll_s=0.1, grace_s=5)
        orphan = int(driver.stdout.readline())
        assert ended == [orphan] and not psutil.pid_exists(orphan) and older.poll() is None
    finally:
        for proc in (older, driver, killer):
            proc.kill()
            proc.wait()
