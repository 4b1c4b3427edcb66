"""Fault injection for the score job: SIGKILL it (its whole process tree, Ray included) at random moments
N times, then let it finish, and check that every input row is in the output exactly once and that the
scores equal those of an uninterrupted run of the same config.

The corpus mixes good rows with bad ones (malformed JSON, a 5,000-digit integer, missing text), so the
quarantine is checked too: every row id is in exactly one of scores/ and scores/quarantine/.

    .venv/bin/python benchmarks/fault_injection.py --kills 10            # prints the count and the verdict
    .venv/bin/python benchmarks/fault_injection.py --kills 3 --rows 2000  # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.jobs.score_run import sentences  # noqa: E402
from tests.tiny import save_tiny_model  # noqa: E402
from ue.artifacts import RunLayout  # noqa: E402
from ue.scoring import read_quarantine, read_scores  # noqa: E402


def write_corpus(path: Path, rows: int) -> set[str]:
    """``rows`` lines, every 97th one bad in a rotating way; returns every id."""
    bad = ['{"doc": "d%d", "text": ' + "9" * 5000 + "}", '{"doc": "d%d", "text": "unclosed', '{"doc": "d%d"}']
    lines = []
    for i, text in enumerate(sentences(rows, seed=11)):
        lines.append(bad[i // 97 % 3] % i if i % 97 == 5 else json.dumps({"doc": f"d{i}", "text": text}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {f"d{i}" for i in range(rows)}


def start(config: Path, root: Path, run_id: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "jobs.score", "--config", str(config), f"run.root={root}", f"run.run_id={run_id}"]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    tree = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    alive = []
    for pid in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            alive.append(psutil.Process(pid))
    psutil.wait_procs(alive, timeout=60)


def outcome(layout: RunLayout) -> tuple[list[str], list[str], dict[str, tuple]]:
    scores = read_scores(layout.scores_dir).to_pylist()
    # A bad line's id may be unknown (it did not parse): its line number names its row, d<line - 1>.
    quarantine = [f"d{line - 1}" for line in read_quarantine(layout.quarantine_dir)["line"].to_pylist()]
    by_id = {r["id"]: (r["pred"], round(r["confidence"], 6), round(r["u_msp"], 6)) for r in scores}
    return [r["id"] for r in scores], quarantine, by_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs before the run may finish (N).")
    parser.add_argument("--rows", type=int, default=12000)
    parser.add_argument("--rows-per-block", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="Seeds the kill moments.")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="ue-faults-") as tmp:
        tmp = Path(tmp)
        model = save_tiny_model(tmp / "model", "bert", "sequence_classification")
        ids = write_corpus(tmp / "corpus.jsonl", args.rows)
        config = tmp / "score.yaml"
        config.write_text(json.dumps({
            "corpus": {"paths": [str(tmp / "corpus.jsonl")], "id_column": "doc", "rows_per_block": args.rows_per_block,
                       "max_length": 32},
            "model": {"name_or_path": str(model), "num_labels": 2}, "heads": ["msp"],
            "resources": {"num_workers": 1, "cpus_per_worker": 1}}))
        log = tmp / "job.log"

        started = time.monotonic()
        clean = start(config, tmp / "runs", "clean", log)
        if clean.wait(timeout=1800) != 0:
            raise SystemExit("the uninterrupted run failed:\n" + log.read_text()[-3000:])
        clean_seconds = time.monotonic() - started
        _, _, reference = outcome(RunLayout(tmp / "runs", "clean"))
        print(f"uninterrupted run: {clean_seconds:.0f} s; killing the other run {args.kills} times mid-work")

        layout = RunLayout(tmp / "runs", "killed")
        kills = 0
        progress = layout.scores_dir / "progress"
        while kills < args.kills:
            before = len(list(progress.glob("*.json")))
            proc = start(config, tmp / "runs", "killed", log)
            # A random moment inside the work: after 1-2 more blocks are written, plus up to half a second
            # (mid-block, mid-write or between blocks). A kill during Ray's start-up alone proves little.
            target = before + rng.randint(1, 2)
            while proc.poll() is None and len(list(progress.glob("*.json"))) < target:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))
            if proc.poll() is not None:
                print(f"  the run finished before kill {kills + 1} came; stopping at {kills} kill(s)")
                break
            kill_tree(proc)
            kills += 1
            done = len(list(progress.glob("*.json")))
            print(f"  kill {kills}: {done} block(s) done so far")
        final = start(config, tmp / "runs", "killed", log)
        if final.wait(timeout=1800) != 0:
            raise SystemExit("the resumed run failed:\n" + log.read_text()[-3000:])

        scored, quarantined, by_id = outcome(layout)
        seen = scored + quarantined
        once = len(seen) == len(set(seen)) and set(seen) == ids
        same = by_id == reference
        print(f"kills: {kills}; rows: {len(ids)}; scored {len(scored)}, quarantined {len(quarantined)}; "
              f"every id exactly once: {once}; scores identical to the uninterrupted run: {same}")
        if not (once and same):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
