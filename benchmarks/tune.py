"""Benchmark: the ALIEN paper grid through Ray Tune on 2 CPUs vs the same fits one after another.

What is measured, in one run on this machine's CPU:

- **Workload**: the 27 configurations of ``tuning/presets/alien_paper.yaml`` (alpha, beta in
  {0.01, 0.1, 1}, lr in {4e-4, 1e-4, 1e-5}; 20 epochs, batch 128, head seed 0) fitted on synthetic
  cached features: 50,000 train rows + 5,000 val rows, d = 384, C = 2 (a random ``Linear(384, 2)``
  "model" whose labels disagree with its prediction on ~15% of rows, more often where it is unsure).
- **Baseline**: the same 27 ``Alien(...).fit(train, val)`` calls one after another in this process,
  torch with its default threads (2 here; ``--baseline-threads 1`` for one). Measured in the same
  run, ``--repeats`` times (default 3), the order alternating: baseline then Tune, Tune then baseline...
- **Ours**: ``tuning.run_search`` over ``tuning.head_trainable`` on a local Ray with 2 CPUs, one CPU
  and one torch thread per trial, 2 trials at once, actors reused; the features go into the object
  store once. Timed from building the trainable (which puts the features) to the returned table;
  starting Ray itself is reported separately.

Reported per repeat and as medians: both wall times, the speed-up (target >= 1.7x), the mean fit
time inside a trial, and two overheads: slot time outside trials = (2 slots x Tune wall - sum of the
trials' own run times) / 27, which includes the idle slot while the 27th trial runs alone; and the
per-trial overhead = 2 x (Tune wall - the makespan of the trials' own run times packed onto 2 slots
in trial order) / 27: what Tune adds per trial (actor start and imports, scheduling, result
handling, object-store reads). A check compares the best validation ROC-AUC per configuration between the two.

Usage::

    .venv/bin/python benchmarks/tune.py            # full size (tens of minutes on 2 busy cores)
    .venv/bin/python benchmarks/tune.py --quick    # smoke run: 5,000 rows, 2 epochs
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
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
    p.add_argument("--repeats", type=int, default=3, help="measurements, the order alternating (default 3)")
    p.add_argument("--tune-first", action="store_true", help="start with the Tune part instead of the baseline")
    p.add_argument("--quick", action="store_true", help="smoke run: n=5000, val=1000, 2 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.val, args.epochs, args.repeats = 5000, 1000, 2, 1
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

    # Repeats alternate the order (baseline first, then Tune first, ...): a background load that
    # drifts during a run then favours neither side. Each ratio uses the baseline of its own repeat.
    runs = []
    for repeat in range(args.repeats):
        order = ("baseline", "tune") if (repeat % 2 == 0) != args.tune_first else ("tune", "baseline")
        for part in order:
            if part == "baseline":
                seq_s, seq_auc = sequential(features, configs)
                print(f"[{repeat + 1}] baseline, one process, one fit after another: {seq_s:8.1f} s  "
                      f"({seq_s / len(configs):.2f} s per fit)", flush=True)
            else:
                with tempfile.TemporaryDirectory(prefix="bench-tune-") as storage:
                    ray_s, tune_s, trials = through_tune(features, args.epochs, storage)
                print(f"[{repeat + 1}] Ray Tune, {CPUS} CPUs, 1 thread per trial:    {tune_s:8.1f} s  "
                      f"(+ {ray_s:.1f} s to start Ray; load average {_load()})", flush=True)
        runs.append(_summarise(seq_s, seq_auc, tune_s, trials, len(configs)))
        print(f"[{repeat + 1}] " + _describe(runs[-1]), flush=True)

    ratios = [r["speedup"] for r in runs]
    print(f"\nspeed-up (baseline / Tune), median of {len(runs)}: {statistics.median(ratios):.2f}x   "
          f"(runs: {', '.join(f'{x:.2f}x' for x in ratios)}; target >= 1.7x)")
    for key, label in (("seq_s", "baseline wall"), ("tune_s", "Tune wall"), ("fit_s", "baseline s per fit"),
                       ("in_trial_s", "run time inside a trial"), ("outside_s", "slot time outside trials, per trial"),
                       ("overhead_s", "per-trial overhead")):
        print(f"  {label + ':':40s} median {statistics.median(r[key] for r in runs):7.2f} s")
    print(f"check: max |val AUC Tune - baseline| over configs and runs = {max(r['auc_diff'] for r in runs):.4f}; "
          f"same best config in every run: {all(r['same_best'] for r in runs)}")
    print(f"load average at the end {_load()}")


def _summarise(seq_s: float, seq_auc: dict[tuple, float], tune_s: float, trials: Any, n: int) -> dict[str, Any]:
    """One repeat's figures: wall times, speed-up, the two overheads and the AUC check."""
    in_trial = float(trials["time_s"].sum())
    tune_auc = {_key(row): row["val_roc_auc"] for row in trials.to_dict("records")}
    return {
        "seq_s": seq_s, "tune_s": tune_s, "speedup": seq_s / tune_s, "fit_s": seq_s / n, "in_trial_s": in_trial / n,
        "outside_s": (CPUS * tune_s - in_trial) / len(trials),
        "overhead_s": CPUS * (tune_s - _makespan(trials["time_s"].tolist(), CPUS)) / len(trials),
        "auc_diff": max(abs(tune_auc[k] - seq_auc[k]) for k in seq_auc),
        "same_best": max(seq_auc, key=seq_auc.get) == max(tune_auc, key=tune_auc.get),
    }


def _describe(run: dict[str, Any]) -> str:
    return (f"speed-up {run['speedup']:.2f}x; inside a trial {run['in_trial_s']:.2f} s vs baseline fit "
            f"{run['fit_s']:.2f} s; slot time outside trials {run['outside_s']:.2f} s/trial; per-trial overhead "
            f"{run['overhead_s']:.2f} s; max |val AUC diff| {run['auc_diff']:.4f}, same best: {run['same_best']}")


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
