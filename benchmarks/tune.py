"""Benchmark: the ALIEN paper grid through Ray Tune on 2 CPUs vs the same fits one after another.

What is measured, in one run on this machine's CPU:

- **Workload**: the 27 configurations of ``tuning/presets/alien_paper.yaml`` (alpha, beta in
  {0.01, 0.1, 1}, lr in {4e-4, 1e-4, 1e-5}; 20 epochs, batch 128, head seed 0) fitted on synthetic
  cached features: 50,000 train rows + 5,000 val rows, d = 384, C = 2 (a random ``Linear(384, 2)``
  "model" whose labels disagree with its prediction on ~15% of rows, more often where it is unsure).
- **Baseline**: the same 27 ``Alien(...).fit(train, val)`` calls one after another in this process,
  torch with its default threads (2 here; ``--baseline-threads 1`` for one). Measured in the same
  run, first (or second with ``--tune-first``).
- **Ours**: ``tuning.run_search`` over ``tuning.head_trainable`` on a local Ray with 2 CPUs, one CPU
  and one torch thread per trial, 2 trials at once, actors reused; the features go into the object
  store once. Timed from building the trainable (which puts the features) to the returned table;
  starting Ray itself is reported separately.

Reported: both wall times, the speed-up (target >= 1.7x), the mean fit time inside a trial, and two
overheads: slot time outside trials = (2 slots x Tune wall - sum of the trials' own run times) / 27,
which includes the idle slot while the 27th trial runs alone; and the per-trial overhead = 2 x (Tune
wall - the makespan of the trials' own run times packed onto 2 slots in trial order) / 27: what Tune
adds per trial (scheduling, actor reuse, result handling, object-store reads). A check compares the
best validation ROC-AUC per configuration between the two.

Usage::

    .venv/bin/python benchmarks/tune.py            # full size (tens of minutes on 2 busy cores)
    .venv/bin/python benchmarks/tune.py --quick    # smoke run: 5,000 rows, 2 epochs
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from typing import Any

import numpy as np
import torch

from tuning import FeatureSet, head_trainable, load_preset, run_search
from ue.heads import build_head
from ue.heads.modules import Classifier, ClassifierSpec

CPUS = 2


def make_features(n: int, n_val: int, d: int, c: int, *, seed: int = 0) -> FeatureSet:
    """Train/val feature columns and the "model's" Linear(d, C) classifier (~15% errors)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c, d)).astype(np.float32) * (3.0 / math.sqrt(d))
    hidden = rng.standard_normal((n + n_val, d), dtype=np.float32)
    logits = hidden @ w.T
    pred = logits.argmax(1)
    # Labels from noisy logits: a row is wrong more often where the model's margin is small.
    label = (logits + rng.gumbel(size=logits.shape).astype(np.float32) * 1.2).argmax(1)
    cols = {"hidden": hidden, "logits": logits, "label": label.astype(np.int64), "pred": pred.astype(np.int64)}
    classifier = Classifier(ClassifierSpec("linear", hidden_size=d, num_labels=c, bias=False))
    with torch.no_grad():
        classifier.out_proj.weight.copy_(torch.from_numpy(w))
    return FeatureSet(train={k: v[:n] for k, v in cols.items()}, val={k: v[n:] for k, v in cols.items()},
                      classifier=classifier)


def grid_configs(epochs: int) -> list[dict[str, Any]]:
    """The 27 head configurations of the alien_paper preset, with ``epochs`` set."""
    space = load_preset("alien_paper")
    keys = list(space.space)
    grids = [space.space[k].grid for k in keys]
    configs = [{}]
    for key, values in zip(keys, grids, strict=True):
        configs = [{**c, key: v} for c in configs for v in values]
    return [{**space.params, **c, "epochs": epochs, "seed": 0} for c in configs]


def sequential(features: FeatureSet, configs: list[dict[str, Any]]) -> tuple[float, dict[tuple, float]]:
    """Wall time of fitting every config in turn, and each config's best validation ROC-AUC."""
    aucs = {}
    start = time.perf_counter()
    for params in configs:
        head = build_head("alien", classifier=features.classifier, **params).fit(features.train, features.val)
        aucs[_key(params)] = max(h["val_roc_auc"] for h in head.history_)
    return time.perf_counter() - start, aucs


def through_tune(features: FeatureSet, epochs: int, storage: str) -> tuple[float, float, Any]:
    """Ray start time, Tune wall time (trainable built -> table returned) and the trials table."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - start
    try:
        space = load_preset("alien_paper").override(params={"epochs": epochs})
        start = time.perf_counter()
        trials = run_search(
            head_trainable("alien", {"bench": features}, cpus_per_trial=1),
            param_space=space.param_space("grid", seeds=[0]), metric="val_roc_auc", mode="max",
            storage_path=storage, max_concurrent_trials=CPUS,
        )
        return ray_start, time.perf_counter() - start, trials
    finally:
        ray.shutdown()


def _key(params: dict[str, Any]) -> tuple:
    return tuple(float(params[k]) for k in ("alpha", "beta", "lr"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="train rows (default 50000)")
    p.add_argument("--val", type=int, default=5_000, help="val rows (default 5000)")
    p.add_argument("--d", type=int, default=384, help="hidden size (default 384)")
    p.add_argument("--classes", type=int, default=2, help="classes (default 2)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per fit (default 20)")
    p.add_argument("--baseline-threads", type=int, default=None,
                   help="torch threads of the sequential baseline (default: torch's, one per core)")
    p.add_argument("--tune-first", action="store_true", help="run the Tune part before the baseline")
    p.add_argument("--quick", action="store_true", help="smoke run: n=5000, val=1000, 2 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.val, args.epochs = 5000, 1000, 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.baseline_threads:
        torch.set_num_threads(args.baseline_threads)
    features = make_features(args.n, args.val, args.d, args.classes)
    configs = grid_configs(args.epochs)
    err = float((features.train["pred"] != features.train["label"]).mean())
    print(f"load average {_load()} (other processes share these cores: compare figures taken at a low load)")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, os.cpu_count() {os.cpu_count()}; "
          f"{len(configs)} configs x {args.epochs} epochs on n={args.n} (+{args.val} val), d={args.d}, "
          f"C={args.classes}, train error rate {err:.3f}", flush=True)

    # Under a drifting background load, the order matters: run both orders and compare.
    for part in (("tune", "baseline") if args.tune_first else ("baseline", "tune")):
        if part == "baseline":
            seq_s, seq_auc = sequential(features, configs)
            print(f"baseline, one process, one fit after another: {seq_s:8.1f} s  "
                  f"({seq_s / len(configs):.2f} s per fit)", flush=True)
        else:
            with tempfile.TemporaryDirectory(prefix="bench-tune-") as storage:
                ray_s, tune_s, trials = through_tune(features, args.epochs, storage)
            print(f"(Tune part done at load average {_load()})", flush=True)

    in_trial = float(trials["time_s"].sum())
    outside = (CPUS * tune_s - in_trial) / len(trials)
    overhead = CPUS * (tune_s - _makespan(trials["time_s"].tolist(), CPUS)) / len(trials)
    tune_auc = {_key(row): row["val_roc_auc"] for row in trials.to_dict("records")}
    diff = max(abs(tune_auc[k] - seq_auc[k]) for k in seq_auc)
    same_best = max(seq_auc, key=seq_auc.get) == max(tune_auc, key=tune_auc.get)
    print(f"Ray Tune, {CPUS} CPUs, 1 thread per trial:    {tune_s:8.1f} s  (+ {ray_s:.1f} s to start Ray)")
    print(f"\nspeed-up (baseline / Tune):        {seq_s / tune_s:6.2f}x   (target >= 1.7x)")
    print(f"trials: {len(trials)}, mean run time inside a trial {in_trial / len(trials):.2f} s "
          f"(baseline fit {seq_s / len(configs):.2f} s with {torch.get_num_threads()} threads)")
    print(f"slot time outside trials: {outside:.2f} s per trial "
          f"({100 * outside * len(trials) / (CPUS * tune_s):.1f}% of the slot time, incl. the idle tail)")
    print(f"per-trial overhead (Tune wall vs the trials packed onto {CPUS} slots): {overhead:.2f} s per trial")
    print(f"check: max |val AUC Tune - baseline| per config = {diff:.4f}; same best config: {same_best}")
    print(f"load average at the end {_load()}")


def _makespan(durations: list[float], slots: int) -> float:
    """Wall time of running ``durations`` in order, each on the first free of ``slots``."""
    free = [0.0] * slots
    for d in durations:
        free[free.index(min(free))] += d
    return max(free)


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
