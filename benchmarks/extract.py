"""Benchmark of the extract stage: rows/s on all-MiniLM-L6-v2 over 20,000 real sentences, next to a
plain batched loop over the transformers ``pipeline("text-classification")`` in the same run.

Data: the first 20,000 of SST-2's sentences (train_sentences, validation, test: 9,613), AG News train
(6,913) and TREC train questions, read from ``$UE_DATA_DIR``, shuffled with seed 0 (a labelled split
is not sorted by length), labels set to 0 (only throughput is measured). Model: MiniLM as a 2-label
``BertForSequenceClassification`` with its classifier initialised from seed 0, truncation at 128
tokens, float32 on this machine's CPUs.

- ours: ``jobs.extract.run`` on that split (2 actors x 1 torch thread, batches of 64 rows of similar
  length, parts of 1,024 rows, Parquet with logits + hidden written atomically). Timed from the call
  to the finished features.json: actor start, model loading and writing included; Ray itself is
  started before the clock (a cluster is already up when a stage runs).
- baseline: one process, torch using every core, ``pipeline(...)`` called on consecutive slices of
  64 texts (``batch_size=64, truncation=True, max_length=128, top_k=None``); the pipeline is built
  before the clock. It returns probabilities only (no hidden states, nothing written). Also measured
  with one torch thread: where the cores are shared with other work, a 2-thread OpenMP pool can be
  much slower than one thread, so that figure is the conservative baseline there.

Both run ``--repeats`` times, interleaved; the medians are reported. The pipeline loop is slow (about
50 rows/s on 2 idle cores), so ``--baseline-rows N`` times it on the first N rows of the same shuffled
order instead (rows/s of a random sample of the same data).

    .venv/bin/python benchmarks/extract.py            # full size (several minutes on 2 cores)
    .venv/bin/python benchmarks/extract.py --quick    # 2,000 sentences, one repeat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UE_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

SOURCES = [("sst2", "train_sentences"), ("sst2", "validation"), ("sst2", "test"), ("ag_news", "train"),
           ("trec", "train")]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BATCH, MAX_LENGTH, PART = 64, 128, 1024


def sentences(n: int) -> list[str]:
    import numpy as np

    root = Path(os.environ["UE_DATA_DIR"])
    texts: list[str] = []
    for name, split in SOURCES:
        with (root / name / f"{split}.jsonl").open(encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    texts = texts[:n]
    order = np.random.default_rng(0).permutation(len(texts))
    return [texts[i] for i in order]


def run_ours(data_file: Path, root: Path, workers: int, threads: int) -> float:
    from jobs import extract
    from jobs.schemas.extract import Config
    from ue.config import load_config

    cfg = load_config(Config, data={
        "run": {"root": str(root), "run_id": "bench", "force": True},
        "data": {"name": str(data_file), "splits": {"test": data_file.stem}, "max_length": MAX_LENGTH},
        "model": {"name_or_path": MINILM, "num_labels": 2}, "splits": ["test"], "batch_size": BATCH,
        "rows_per_part": PART, "resources": {"num_workers": workers, "cpus_per_worker": threads},
    })
    started = time.perf_counter()
    extract.run(cfg)
    return time.perf_counter() - started


def make_pipeline():
    import torch
    from transformers import pipeline

    from ue.models import load_model, load_tokenizer

    torch.manual_seed(0)
    model = load_model(MINILM, task="sequence_classification", num_labels=2).eval()
    return pipeline("text-classification", model=model, tokenizer=load_tokenizer(MINILM), device=-1)


def run_pipeline(pipe, texts: list[str]) -> float:
    started = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        pipe(texts[i : i + BATCH], batch_size=BATCH, truncation=True, max_length=MAX_LENGTH, top_k=None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-rows", type=int, default=None, help="rows for the pipeline loop (default: --rows)")
    parser.add_argument("--quick", action="store_true", help="2,000 sentences, one repeat")
    parser.add_argument("--baseline-threads", type=int, nargs="+", default=[os.cpu_count() or 1, 1],
                        help="torch threads of the pipeline loop, one measurement each")
    args = parser.parse_args()
    rows, repeats = (2_000, 1) if args.quick else (args.rows, args.repeats)

    import ray
    import torch

    texts = sentences(rows)
    baseline_rows = min(args.baseline_rows or rows, rows)
    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "bench.jsonl"
        data_file.write_text("".join(json.dumps({"text": t, "label": 0}) + "\n" for t in texts), encoding="utf-8")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        pipe = make_pipeline()
        times: dict[str, list[float]] = {"ours": [], **{f"{t}": [] for t in args.baseline_threads}}
        try:
            for _ in range(repeats):
                times["ours"].append(run_ours(data_file, Path(tmp) / "runs", workers=2, threads=1))
                for t in args.baseline_threads:
                    torch.set_num_threads(t)
                    times[f"{t}"].append(run_pipeline(pipe, texts[:baseline_rows]))
        finally:
            ray.shutdown()
    rate = {k: (rows if k == "ours" else baseline_rows) / statistics.median(v) for k, v in times.items()}
    print(f"extract benchmark: {rows} real sentences, MiniLM, max_length {MAX_LENGTH}, {os.cpu_count()} CPUs, "
          f"median of {repeats}")
    print(f"  jobs.extract, 2 actors x 1 thread: {rate['ours']:8.1f} rows/s  (runs: {_fmt(times['ours'])})")
    for t in args.baseline_threads:
        print(f"  pipeline loop, {t} torch thread(s), {baseline_rows} rows: {rate[f'{t}']:8.1f} rows/s  "
              f"(runs: {_fmt(times[f'{t}'])})"
              f"  -> speed-up {rate['ours'] / rate[f'{t}']:.2f}x (target >= 1.5x)")


def _fmt(seconds: list[float]) -> str:
    return ", ".join(f"{s:.1f}s" for s in seconds)


if __name__ == "__main__":
    main()
