"""Benchmark of the score stage (``jobs.score``) with MiniLM + a LoRA adapter + fitted heads, on CPU.

What is measured, all in one run on this machine:

1. **Throughput** over ``--rows`` (default 200,000) rows built from real sentences (SST-2 train
   phrases and sentences from ``$UE_DATA_DIR``, cycled in a fixed shuffled order), with the ALIEN
   head deciding ``accept``: rows / s of the whole job (``python -m jobs.score`` in a subprocess:
   Ray start, actor start-up, reading, scoring, writing; 2 actors x 1 torch thread). Baseline, same
   run, same rows, same weights (the LoRA adapter merged into MiniLM, as the job does): a plain
   batched loop over ``transformers.pipeline("text-classification")`` (batch 64, truncation at the
   same max_length), model loading not timed, run with torch on every core and on one thread; the
   faster of the two is the reference. Target: >= 2x.
2. **The heads' cost**: the same job with ALIEN + AdUE + a Mahalanobis OOD score against no head at
   all; rows / s of each, and the share of the actors' time spent computing scores (the
   ``seconds_heads`` / ``seconds`` of the progress records). Target: at most 3% slower.
3. **Memory**: peak, over the job's whole process tree (driver, Ray's raylet / GCS, workers) sampled
   every 0.25 s, of the summed RSS and of the summed PSS (shared pages counted once), at
   ``--rss-rows`` 400,000 against 50,000 rows. Target: <= 1.2x.

Set-up (not timed, cached in ``--workdir``): a LoRA adapter (r=8 on query/key/value, one epoch of
2,000 SST-2 training sentences), the features of those sentences and of SST-2 validation, and the
heads ALIEN, AdUE (5 epochs) and Mahalanobis fitted on them.

Every measurement is printed and saved to ``<workdir>/results.json`` as soon as it is done, so a long
run cut short still leaves what it measured; the table at the end compares them.

Usage::

    .venv/bin/python benchmarks/score.py            # full size (hours on 2 shared cores)
    .venv/bin/python benchmarks/score.py --quick    # smoke run (small sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MAX_LENGTH, BATCH = 128, 64


def data_dir() -> Path:
    return Path(os.environ.get("UE_DATA_DIR") or ROOT.parent / "shared" / "data")


def sst2(split: str) -> list[dict[str, Any]]:
    lines = (data_dir() / "sst2" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


# -- set-up: adapter, features, heads ----------------------------------------------------------------
def train_adapter(adapter_dir: Path, rows: list[dict[str, Any]]) -> None:
    """One epoch of LoRA (r=8, query/key/value; the classifier trained in full) with cross-entropy."""
    import torch

    from ue.models import apply_lora, load_model, load_tokenizer
    from ue.tokenize import collate, encode_classification

    torch.manual_seed(0)
    tok = load_tokenizer(MINILM)
    model = apply_lora(load_model(MINILM, task="sequence_classification", num_labels=2),
                       task="sequence_classification", r=8, alpha=16, dropout=0.0,
                       target_modules=["query", "key", "value"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    model.train()
    for start in range(0, len(rows), 32):
        chunk = rows[start:start + 32]
        batch = collate(encode_classification(tok, [r["text"] for r in chunk], max_length=64), pad_id=tok.pad_token_id)
        loss = model(**batch, labels=torch.tensor([r["label"] for r in chunk])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(adapter_dir)


def merged_model(adapter_dir: Path) -> Any:
    from ue.models import load_adapter, load_model

    base = load_model(MINILM, task="sequence_classification", num_labels=2)
    return load_adapter(base, adapter_dir).merge_and_unload()


def write_features(layout: Any, adapter_dir: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    """What the extract stage caches: features per split, the classifier, ``features.json``."""
    from ue.artifacts import atomic_write_json
    from ue.extraction import classify_batch, length_batches
    from ue.feature_cache import feature_table, write_part
    from ue.heads import classifier_from_model, save_classifier
    from ue.models import load_tokenizer
    from ue.tokenize import collate, encode_classification

    tok, model = load_tokenizer(MINILM), merged_model(adapter_dir).eval()
    for split, rows in splits.items():
        encoded = encode_classification(tok, [r["text"] for r in rows], max_length=MAX_LENGTH)
        order, outs = [], []
        for idx in length_batches([len(e["input_ids"]) for e in encoded], batch_size=BATCH):
            batch = collate([encoded[i] for i in idx], pad_id=tok.pad_token_id)
            outs.append(classify_batch(model, **batch))
            order.append(idx)
        back = np.argsort(np.concatenate(order))
        table = feature_table(ids=[f"{split}-{i}" for i in range(len(rows))], label=[r["label"] for r in rows],
                              pred=np.concatenate([o.pred for o in outs])[back],
                              logits=np.concatenate([o.logits for o in outs])[back],
                              hidden=np.concatenate([o.hidden for o in outs])[back])
        write_part(table, layout.features_split_dir(split) / "part-00000.parquet")
    save_classifier(classifier_from_model(model), layout.features_dir)
    atomic_write_json(layout.features_meta, {"model": MINILM, "adapter": str(adapter_dir), "num_labels": 2,
                                             "hidden_size": model.config.hidden_size,
                                             "task": "sequence_classification"})


def fit_heads(layout: Any) -> None:
    import pyarrow.parquet as pq

    from ue.heads import build_head, load_classifier

    train, val = (pq.read_table(layout.features_split_dir(s)) for s in ("train", "val"))
    clf = load_classifier(layout.features_dir)
    for name, params in {"alien": {"classifier": clf, "epochs": 5}, "adue": {"classifier": clf, "epochs": 5},
                         "mahalanobis": {}}.items():
        build_head(name, **params).fit(train, val).save(layout.head_dir(name))


def set_up(workdir: Path, train_rows: int) -> Any:
    from ue.artifacts import RunLayout

    layout = RunLayout(workdir / "runs", "bench")
    adapter = workdir / "adapter"
    if not (layout.head_dir("mahalanobis") / "head.json").is_file():
        train = [r for k, r in enumerate(sst2("train_sentences")) if k % 3 == 0][:train_rows]
        print(f"set-up: LoRA adapter on {len(train)} sentences, features, heads ...", flush=True)
        train_adapter(adapter, train)
        write_features(layout, adapter, {"train": train, "val": sst2("validation")})
        fit_heads(layout)
    return layout


def corpus(workdir: Path, n: int) -> tuple[Path, list[str]]:
    """``n`` real sentences (SST-2 train phrases + sentences, shuffled once, cycled) as JSONL."""
    texts = [r["text"] for r in sst2("train") + sst2("train_sentences")]
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))]
    rows = [texts[i % len(texts)] for i in range(n)]
    path = workdir / f"corpus-{n}.jsonl"
    if not path.is_file():
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows), encoding="utf-8")
    return path, rows


# -- measurements ------------------------------------------------------------------------------------
def run_job(workdir: Path, path: Path, adapter: Path, *, heads: list[str], ood: str | None) -> dict[str, Any]:
    """``python -m jobs.score`` in a subprocess; its summary, wall time and peak memory."""
    config = {
        "run": {"root": str(workdir / "runs"), "run_id": "bench", "force": True},
        "corpus": {"paths": [str(path)], "max_length": MAX_LENGTH, "rows_per_block": 4096},
        "model": {"name_or_path": MINILM, "num_labels": 2}, "adapter": str(adapter),
        "heads": heads, "ood": ood, "accept": {"head": heads[0]} if heads else None,
        "batch_size": BATCH, "resources": {"num_workers": 2, "cpus_per_worker": 1},
    }
    config_path = workdir / "score.yaml"
    config_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    with (workdir / "job.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jobs.score", "--config", str(config_path)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        memory = PeakMemory(proc.pid)
        code = proc.wait()
        memory.stop()
    if code != 0:
        raise RuntimeError(f"the score job failed ({code}); see {workdir / 'job.log'}")
    scores = workdir / "runs" / "bench" / "scores"
    summary = json.loads((scores / "summary.json").read_text())
    records = [json.loads(p.read_text()) for p in (scores / "progress").glob("*.json")]
    return {"rows": summary["rows"], "job_seconds": summary["seconds"], "wall_seconds": time.perf_counter() - started,
            "rows_per_s": summary["rows"] / summary["seconds"],
            "heads_share": sum(r["seconds_heads"] for r in records) / sum(r["seconds"] for r in records),
            "peak_rss_mb": memory.rss / 2**20, "peak_pss_mb": memory.pss / 2**20}


class PeakMemory:
    """Samples the summed RSS and PSS of a process and all its descendants until ``stop``."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid, self.every, self.rss, self.pss = pid, every, 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(self.every):
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = pss = 0
            for p in tree:
                try:
                    info = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss, pss = rss + info.rss, pss + info.pss
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def run_pipeline(adapter: Path, texts: list[str], *, threads: int) -> dict[str, Any]:
    """The baseline: ``pipeline("text-classification")`` over the rows in batches of 64."""
    import torch
    from transformers import pipeline

    from ue.models import load_tokenizer

    torch.set_num_threads(threads)
    pipe = pipeline("text-classification", model=merged_model(adapter).eval(), tokenizer=load_tokenizer(MINILM),
                    device="cpu")
    started = time.perf_counter()
    out = []
    for start in range(0, len(texts), BATCH):
        out += pipe(texts[start:start + BATCH], batch_size=BATCH, truncation=True, max_length=MAX_LENGTH)
    seconds = time.perf_counter() - started
    assert len(out) == len(texts)
    return {"rows": len(texts), "threads": threads, "seconds": seconds, "rows_per_s": len(texts) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--rows", type=int, default=200_000, help="corpus rows for throughput and heads' cost")
    parser.add_argument("--baseline-rows", type=int, default=None, help="rows for the pipeline loop (default: --rows)")
    parser.add_argument("--rss-rows", type=int, nargs=2, default=(50_000, 400_000), help="small and large corpus")
    parser.add_argument("--baseline-threads", type=int, nargs="+", default=[os.cpu_count() or 1, 1],
                        help="torch threads of the pipeline loop, one measurement each")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ue-bench-score"))
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: <workdir>/results.json)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.rss_rows = 3_000, (1_000, 8_000)
    os.environ["HF_HUB_OFFLINE"] = "1"
    args.workdir.mkdir(parents=True, exist_ok=True)
    set_up(args.workdir, train_rows=512 if args.quick else 2_000)
    adapter = args.workdir / "adapter"
    path, texts = corpus(args.workdir, args.rows)

    out = args.out or args.workdir / "results.json"
    results: dict[str, Any] = {"rows": args.rows, "cpus": os.cpu_count(), "load_at_start": os.getloadavg()}

    def measure(key: str, result: Any) -> None:  # saved after every phase, so a long run can be cut short
        results[key] = result
        out.write_text(json.dumps(results, indent=2))
        print(f"{key}: {json.dumps(result)}", flush=True)

    print(f"scoring {args.rows:,} rows ...", flush=True)
    measure("ours_alien", run_job(args.workdir, path, adapter, heads=["alien"], ood=None))
    # The pipeline's torch uses every core; on a busy machine one thread can be faster: the better counts.
    baseline_texts = texts[: args.baseline_rows or args.rows]
    for t in sorted(set(args.baseline_threads), reverse=True):
        measure(f"baseline_{t}_threads", run_pipeline(adapter, baseline_texts, threads=t))
    measure("no_head", run_job(args.workdir, path, adapter, heads=[], ood=None))
    measure("alien_adue_mahalanobis", run_job(args.workdir, path, adapter, heads=["alien", "adue"], ood="mahalanobis"))
    # Memory last (the large corpus is the longest run); the throughput run is reused when it has the size.
    for n in args.rss_rows:
        measure(f"memory_{n}", results["ours_alien"] if n == args.rows else
                run_job(args.workdir, corpus(args.workdir, n)[0], adapter, heads=["alien"], ood=None))
    results["load_at_end"] = os.getloadavg()
    report(results, args.rss_rows)
    print(f"results: {out}")


def report(r: dict[str, Any], rss_rows: tuple[int, int]) -> None:
    ours = r["ours_alien"]
    base = max((v for k, v in r.items() if k.startswith("baseline_")), key=lambda b: b["rows_per_s"])
    none, heads = r["no_head"], r["alien_adue_mahalanobis"]
    small, large = r[f"memory_{rss_rows[0]}"], r[f"memory_{rss_rows[1]}"]
    slower = 1 - heads["rows_per_s"] / none["rows_per_s"]
    lines = [
        "| measure | ours | baseline | ratio | target |", "|---|---|---|---|---|",
        f"| rows/s, {r['rows']:,} rows, ALIEN (vs pipeline loop, {base['rows']:,} rows, {base['threads']} thread(s)) | "
        f"{ours['rows_per_s']:.0f} | "
        f"{base['rows_per_s']:.0f} | {ours['rows_per_s'] / base['rows_per_s']:.2f}x | >= 2x |",
        f"| rows/s, ALIEN + AdUE + Mahalanobis vs no head | {heads['rows_per_s']:.0f} | {none['rows_per_s']:.0f} | "
        f"{100 * slower:+.1f}% slower | <= 3% |",
        f"| actors' time spent on scores: all heads / no head | {100 * heads['heads_share']:.2f}% | "
        f"{100 * none['heads_share']:.2f}% | | |",
        f"| peak RSS (MB), {rss_rows[1]:,} vs {rss_rows[0]:,} rows | {large['peak_rss_mb']:.0f} | "
        f"{small['peak_rss_mb']:.0f} | {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x | <= 1.2x |",
        f"| peak PSS (MB), {rss_rows[1]:,} vs {rss_rows[0]:,} rows | {large['peak_pss_mb']:.0f} | "
        f"{small['peak_pss_mb']:.0f} | {large['peak_pss_mb'] / small['peak_pss_mb']:.2f}x | <= 1.2x |",
    ]
    print("\n".join(lines))
    print(f"load average at start {r['load_at_start']}, at end {r['load_at_end']} ({r['cpus']} CPUs)")


if __name__ == "__main__":
    main()
