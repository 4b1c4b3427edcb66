"""Benchmark: the ALIEN paper grid through a packed Ray Tune search on 2 CPUs vs the same fits one after another.

What is measured, in one run on this machine's CPU:

- **Workload**: the 27 configurations of ``tuning/presets/alien_paper.yaml`` (alpha, beta in
  {0.01, 0.1, 1}, lr in {4e-4, 1e-4, 1e-5}; 20 epochs, batch 128, head seed 0, ALIEN's default
  patience 5) fitted on synthetic cached features: 50,000 train rows + 5,000 val rows, d = 384,
  C = 2 (a random ``Linear(384, 2)`` "model" whose labels disagree with its prediction on ~15% of
  rows, more often where it is unsure).
- **Baseline**: the same 27 ``Alien(...).fit(train, val)`` calls one after another in this process,
  torch with its default threads (2 here; ``--baseline-threads 1`` for one). Measured in the same
  run, ``--repeats`` times (default 3), the order alternating: baseline then Tune, Tune then baseline...
- **Ours**: ``tuning.run_packed_search``: the grid cut into 2 packs (``tuning.packing.cut_packs``),
  one Ray Tune trial each on a local Ray with 2 CPUs, one torch thread per trial; each trial fits
  its configurations in one batched loop (``ue.heads.fit_packed``). Timed from building the
  trainable (which puts the features) to the returned table; starting Ray itself is reported apart.
  ``--patience none`` runs both sides without early stopping (a pack runs until its slowest
  configuration stops, so early stopping saves the baseline more than the pack).

Reported per repeat and as medians: both wall times, the speed-up (target >= 6x), the packs' own
run times, and a check of the best validation ROC-AUC and chosen epoch per configuration between
the two. Then, once: the 144-configuration ``adue_paper`` grid through the packed search with its
shipped scheduler (successive halving, grace 2, reduction 3), timed; and the peak RSS of a process
that fits one trial's pack against one that fits one configuration (``--probe``, same features).

Usage::

    .venv/bin/python benchmarks/tune.py            # full size (tens of minutes on 2 busy cores)
    .venv/bin/python benchmarks/tune.py --quick    # smoke run: 5,000 rows, 2 epochs
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

from tuning import FeatureSet, load_preset
from tuning.packing import cut_packs, expand_configs
from tuning.search import run_packed_search
from ue.heads import build_head, fit_packed
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


def grid_configs(preset: str, epochs: int | None, patience: int | None | str) -> list[dict[str, Any]]:
    """The configurations of a preset (seed 0), with ``epochs`` and ``patience`` set unless None / "default"."""
    space = load_preset(preset)
    fixed = {} if epochs is None else {"epochs": epochs}
    fixed |= {} if patience == "default" else {"patience": patience}
    return [{**c, **fixed} for c in expand_configs(space.override(params=fixed), "grid", seeds=[0])]


def sequential(features: FeatureSet, configs: list[dict[str, Any]]) -> tuple[float, dict[tuple, tuple]]:
    """Wall time of fitting every config in turn, and each config's (best val ROC-AUC, chosen epoch)."""
    out = {}
    start = time.perf_counter()
    for params in configs:
        head = build_head("alien", classifier=features.classifier, **params).fit(features.train, features.val)
        out[_key(params)] = (max(h["val_roc_auc"] for h in head.history_), head.best_epoch_)
    return time.perf_counter() - start, out


def through_tune(features: FeatureSet, configs: list[dict[str, Any]], storage: str, head: str = "alien",
                 **search: Any) -> tuple[float, float, Any]:
    """Ray start time, packed Tune wall time (trainable built -> table returned) and the trials table."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - start
    try:
        start = time.perf_counter()
        trials = run_packed_search(head, {"bench": features}, cut_packs(configs, packs=CPUS, default_epochs=50),
                                   storage_path=storage, max_concurrent_trials=CPUS, **search)
        return ray_start, time.perf_counter() - start, trials
    finally:
        ray.shutdown()


def probe(kind: str, args: argparse.Namespace) -> None:
    """Fit one trial's pack (``pack``) or one configuration (``fit``) and print the peak RSS in MiB."""
    torch.set_num_threads(1)
    features = make_features(args.n, args.val, args.d, args.classes)
    configs = grid_configs("alien_paper", args.epochs, _patience(args.patience))
    pack = cut_packs(configs, packs=CPUS, default_epochs=50)[0] if kind == "pack" else configs[:1]
    heads = [build_head("alien", classifier=features.classifier, **c) for c in pack]
    fit_packed(heads, features.train, features.val) if kind == "pack" else heads[0].fit(features.train, features.val)
    print(f"{len(heads)} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


def _peak_rss(kind: str, argv: list[str]) -> tuple[int, float]:
    out = subprocess.run([sys.executable, __file__, *argv, "--probe", kind], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", ".")})
    configs, mib = out.stdout.split()[-2:]
    return int(configs), float(mib)


def _patience(value: str) -> int | None | str:
    return None if value == "none" else ("default" if value == "default" else int(value))


def _key(params: dict[str, Any]) -> tuple:
    return tuple(float(params[k]) for k in ("alpha", "beta", "lr"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="train rows (default 50000)")
    p.add_argument("--val", type=int, default=5_000, help="val rows (default 5000)")
    p.add_argument("--d", type=int, default=384, help="hidden size (default 384)")
    p.add_argument("--classes", type=int, default=2, help="classes (default 2)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per fit (default 20)")
    p.add_argument("--patience", default="default", help="ALIEN's patience: default (5), none, or a number")
    p.add_argument("--baseline-threads", type=int, default=None,
                   help="torch threads of the sequential baseline (default: torch's, one per core)")
    p.add_argument("--repeats", type=int, default=3, help="measurements, the order alternating (default 3)")
    p.add_argument("--tune-first", action="store_true", help="start with the Tune part instead of the baseline")
    p.add_argument("--no-adue", action="store_true", help="skip timing the 144-config adue_paper grid")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS probes")
    p.add_argument("--probe", choices=["pack", "fit"], help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="smoke run: n=5000, val=1000, 2 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.val, args.epochs, args.repeats = 5000, 1000, 2, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.probe:
        probe(args.probe, args)
        return
    if args.baseline_threads:
        torch.set_num_threads(args.baseline_threads)
    features = make_features(args.n, args.val, args.d, args.classes)
    configs = grid_configs("alien_paper", args.epochs, _patience(args.patience))
    err = float((features.train["pred"] != features.train["label"]).mean())
    print(f"load average {_load()} (other processes share these cores: compare figures taken at a low load)")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, os.cpu_count() {os.cpu_count()}; "
          f"{len(configs)} configs x {args.epochs} epochs (patience {args.patience}) on n={args.n} (+{args.val} val), "
          f"d={args.d}, C={args.classes}, train error rate {err:.3f}", flush=True)

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
                    ray_s, tune_s, trials = through_tune(features, configs, storage)
                print(f"[{repeat + 1}] packed Ray Tune, {CPUS} packs on {CPUS} CPUs, 1 thread each: {tune_s:8.1f} s  "
                      f"(+ {ray_s:.1f} s to start Ray; load average {_load()})", flush=True)
        runs.append(_summarise(seq_s, seq_auc, tune_s, trials, len(configs)))
        print(f"[{repeat + 1}] " + _describe(runs[-1]), flush=True)

    ratios = [r["speedup"] for r in runs]
    print(f"\nspeed-up (baseline / packed Tune), median of {len(runs)}: {statistics.median(ratios):.2f}x   "
          f"(runs: {', '.join(f'{x:.2f}x' for x in ratios)}; target >= 6x)")
    for key, label in (("seq_s", "baseline wall"), ("tune_s", "packed Tune wall"), ("fit_s", "baseline s per fit"),
                       ("pack_s", "longest pack's own run time"), ("outside_s", "Tune wall - longest pack")):
        print(f"  {label + ':':40s} median {statistics.median(r[key] for r in runs):7.2f} s")
    print(f"check: max |val AUC packed - baseline| over configs and runs = {max(r['auc_diff'] for r in runs):.2e}; "
          f"same chosen epoch everywhere: {all(r['same_epoch'] for r in runs)}; "
          f"same best config in every run: {all(r['same_best'] for r in runs)}")

    if not args.no_adue:
        adue = grid_configs("adue_paper", None if not args.quick else args.epochs, "default")
        with tempfile.TemporaryDirectory(prefix="bench-tune-") as storage:
            ray_s, adue_s, trials = through_tune(features, adue, storage, head="adue", scheduler="asha",
                                                 max_t=max(c["epochs"] for c in adue), grace_period=2,
                                                 reduction_factor=3)
        print(f"adue_paper: {len(adue)} configs (epochs 5/10/20, successive halving grace 2, reduction 3) through "
              f"the packed search on {CPUS} CPUs: {adue_s:.1f} s (+ {ray_s:.1f} s to start Ray); "
              f"{int(trials['early_stopped'].sum())} stopped early; "
              f"{int(trials['iterations'].sum())} config-epochs trained; load average {_load()}")
    if not args.no_rss:
        argv_size = ["--n", str(args.n), "--val", str(args.val), "--d", str(args.d), "--classes", str(args.classes),
                     "--epochs", str(args.epochs), "--patience", args.patience]
        (k, pack_mib), (_, fit_mib) = _peak_rss("pack", argv_size), _peak_rss("fit", argv_size)
        print(f"peak RSS: a process fitting one trial's pack of {k} configs {pack_mib:.0f} MiB; "
              f"one fitting one config {fit_mib:.0f} MiB (same features, built in the process)")
    print(f"load average at the end {_load()}")


def _summarise(seq_s: float, seq: dict[tuple, tuple], tune_s: float, trials: Any, n: int) -> dict[str, Any]:
    """One repeat's figures: wall times, speed-up, the longest pack and the agreement check."""
    packed = {_key(row): (row["val_roc_auc"], row["best_epoch"]) for row in trials.to_dict("records")}
    pack_s = float(trials["time_s"].max())
    return {
        "seq_s": seq_s, "tune_s": tune_s, "speedup": seq_s / tune_s, "fit_s": seq_s / n, "pack_s": pack_s,
        "outside_s": tune_s - pack_s, "mean_epochs": float(trials["iterations"].mean()),
        "max_epochs": int(trials["iterations"].max()),
        "auc_diff": max(abs(packed[k][0] - seq[k][0]) for k in seq),
        "same_epoch": all(packed[k][1] == seq[k][1] for k in seq),
        "same_best": max(seq, key=lambda k: seq[k][0]) == max(packed, key=lambda k: packed[k][0]),
    }


def _describe(run: dict[str, Any]) -> str:
    return (f"speed-up {run['speedup']:.2f}x; longest pack {run['pack_s']:.1f} s vs baseline fit "
            f"{run['fit_s']:.2f} s (a config trains {run['mean_epochs']:.1f} epochs on average, a pack runs until its "
            f"longest, {run['max_epochs']}); Tune wall beyond the longest pack {run['outside_s']:.1f} s (so at most "
            f"{run['seq_s'] / run['outside_s']:.1f}x however fast the packs); max |val AUC diff| "
            f"{run['auc_diff']:.2e}, same epochs: {run['same_epoch']}, same best: {run['same_best']}")


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
