"""Acceptance: a scoring job killed (SIGKILL, the whole process tree) after some shards, then rerun,
ends with every input row exactly once in the output."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.jobs.score_run import sentences
from tests.tiny import save_tiny_model
from ue.artifacts import Manifest, RunLayout
from ue.scoring import read_scores

ROOT = Path(__file__).resolve().parents[2]
ROWS, ROWS_PER_BLOCK = 600, 10


def _start(config: Path, root: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HF_HUB_OFFLINE": "1"}  # a local Ray
    command = [sys.executable, "-m", "jobs.score", "--config", str(config), f"run.root={root}", "run.run_id=killed"]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the job and every process it started (Ray's raylet, GCS and workers included)."""
    tree = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    psutil.wait_procs([p for p in map(_process, tree) if p is not None], timeout=60)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


@pytest.mark.slow
def test_a_killed_run_resumed_scores_every_row_exactly_once(tmp_path: Path):
    model = save_tiny_model(tmp_path / "model", "bert", "sequence_classification")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"doc": f"d{i}", "text": t}) + "\n"
                              for i, t in enumerate(sentences(ROWS, seed=5))), encoding="utf-8")
    config = tmp_path / "score.yaml"
    config.write_text(json.dumps({
        "corpus": {"paths": [str(corpus)], "id_column": "doc", "rows_per_block": ROWS_PER_BLOCK, "max_length": 32},
        "model": {"name_or_path": str(model), "num_labels": 2},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
    }))
    layout, log = RunLayout(tmp_path / "runs", "killed"), tmp_path / "job.log"
    progress = layout.scores_dir / "progress"

    proc = _start(config, tmp_path / "runs", log)
    try:
        deadline = time.monotonic() + 600
        while len(list(progress.glob("*.json"))) < 3:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no shard after 10 minutes:\n" + log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        _kill_tree(proc)
    done = len(list(progress.glob("*.json")))
    assert 3 <= done < ROWS // ROWS_PER_BLOCK, "the job finished before it could be killed"
    assert Manifest(layout).stage("score")["status"] == "running"

    rerun = _start(config, tmp_path / "runs", log)
    assert rerun.wait(timeout=900) == 0, log.read_text()[-3000:]
    ids = read_scores(layout.scores_dir)["id"].to_pylist()
    assert len(ids) == len(set(ids)) == ROWS
    assert set(ids) == {f"d{i}" for i in range(ROWS)}
    summary = json.loads((layout.scores_dir / "summary.json").read_text())
    assert (summary["rows"], summary["scored"], summary["quarantined"]) == (ROWS, ROWS, 0)
    assert summary["rows_this_run"] == ROWS - done * ROWS_PER_BLOCK
