"""The Ray Tune trainable that fits one trained head (ALIEN, AdUE) configuration on cached features.

The features travel once through the object store: :func:`head_trainable` wraps
:func:`fit_head_trial` with ``tune.with_parameters``, which ``ray.put``s them when the search starts;
each trial then maps the same shared-memory NumPy arrays read-only (no copy, no Parquet read).
Only the fit split (train) and the selection split (val) are ever handed to trials, so the test
split cannot take part in model selection.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ue.features import error_indicator
from ue.heads.modules import Classifier
from ue.metrics import METRICS

FINAL = "final"
"""Key set to True in a trial's last report; trials without it were stopped early by the scheduler."""
REPLICA = "replica"
"""Config key naming which :class:`FeatureSet` a trial fits (several backbone fine-tunes)."""
PACK = "pack"
"""Config key of a packed search's trial: the index of its pack of head configurations."""
CONFIGS = "configs"
"""Key of a packed trial's last report: one dict per configuration (the rows of the trials table)."""


@dataclass(frozen=True)
class FeatureSet:
    """Cached features of one fine-tuned backbone.

    ``train``: columns the head fits on (``hidden`` (n, d), ``logits`` (n, C), ``label``, ``pred``);
    ``val``: the same columns of the selection split; ``classifier``: the model's own classification
    module, which the head copies.
    """

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    classifier: Classifier


def fit_head_trial(config: dict[str, Any], *, head: str, features: dict[str, FeatureSet], threads: int = 1) -> None:
    """Fit ``head`` with the trial's ``config`` and report to Tune after every epoch.

    Reports per epoch: ``epoch``, ``train_loss``, ``epoch_val_roc_auc`` and ``val_roc_auc``, the best
    validation ROC-AUC so far (the head keeps its best epoch, so that is what a stopped trial is worth
    and what ASHA compares). The last report adds ``best_epoch``, every ``val_<metric>`` of
    ``ue.metrics.METRICS`` for the kept epoch, and ``final = True``.
    """
    import torch
    from ray import tune

    from ue.heads import build_head

    torch.set_num_threads(threads)  # trials share the node's cores: one thread per reserved CPU
    params = dict(config)
    data = features[params.pop(REPLICA, next(iter(features)))]
    estimator = build_head(head, classifier=data.classifier, **params)
    best = -math.inf
    last: dict[str, float] = {}

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        nonlocal best, last
        auc = metrics.get("val_roc_auc", math.nan)
        best = auc if math.isfinite(auc) and auc > best else best
        last = {"epoch": epoch, "train_loss": metrics["train_loss"], "epoch_val_roc_auc": auc,
                "val_roc_auc": best if math.isfinite(best) else math.nan}
        # The last epoch's report waits for the final metrics, so a trial reports exactly once per epoch.
        if epoch < estimator.epochs:
            tune.report(last)

    with read_only_features():
        estimator.fit(data.train, data.val, on_epoch=on_epoch)
        scores = estimator.uncertainty(data.val)
    errors = error_indicator(data.val)
    final = {f"val_{name}": float(metric(scores, errors)) for name, metric in METRICS.items()}
    tune.report({**last, **final, "best_epoch": estimator.best_epoch_, FINAL: True})


def fit_pack_trial(
    config: dict[str, Any], *, head: str, features: dict[str, FeatureSet], packs: list[list[dict[str, Any]]],
    halving: Any = None, threads: int = 1,
) -> None:
    """Fit pack ``config["pack"]`` of ``packs`` in one batched loop (``ue.heads.fit_packed``).

    Reports after every epoch: ``epoch``, ``active`` (configs still training) and ``val_roc_auc``,
    the best validation ROC-AUC so far over the pack. The last report adds ``configs``: per
    configuration what :func:`fit_head_trial` reports last (its values, ``epoch``, ``train_loss``,
    ``epoch_val_roc_auc``, ``val_roc_auc``, every ``val_<metric>`` of the kept epoch, ``best_epoch``),
    ``iterations`` (epochs trained) and ``final`` (False: stopped by ``halving``, a
    :class:`tuning.packing.SuccessiveHalving`), then ``final = True`` for the pack.
    """
    import torch
    from ray import tune

    from ue.heads import build_head, fit_packed

    torch.set_num_threads(threads)
    members = packs[config[PACK]]
    data = features[members[0].get(REPLICA, next(iter(features)))]
    heads = [build_head(head, classifier=data.classifier, **{k: v for k, v in c.items() if k != REPLICA})
             for c in members]
    best = dict.fromkeys(range(len(heads)), math.nan)
    stopped: set[int] = set()

    def on_epoch(epoch: int, metrics: dict[int, dict[str, float]]) -> list[int]:
        for k, m in metrics.items():
            auc = m.get("val_roc_auc", math.nan)
            if math.isfinite(auc) and not auc <= best[k]:
                best[k] = auc
        drop = [] if halving is None else halving.stop(
            epoch, {k: best[k] for k in metrics}, {k: heads[k].epochs for k in metrics})
        stopped.update(drop)
        if any(epoch < heads[k].epochs for k in metrics if k not in stopped):
            tune.report({"epoch": epoch, "active": len(metrics) - len(drop), "val_roc_auc": _nanmax(best.values())})
        return drop

    with read_only_features():
        fit_packed(heads, data.train, data.val, on_epoch=on_epoch)
        rows = [_pack_row(c, h, data, final=k not in stopped) for k, (c, h) in enumerate(
            zip(members, heads, strict=True))]
    tune.report({"epoch": max(len(h.history_) for h in heads), "active": 0, "val_roc_auc": _nanmax(best.values()),
                 CONFIGS: rows, FINAL: True})


def _pack_row(config: dict[str, Any], head: Any, data: FeatureSet, *, final: bool) -> dict[str, Any]:
    """One configuration's row: its last epoch's figures and every val metric of the epoch it kept."""
    last = head.history_[-1] if head.history_ else {}
    scores, errors = head.uncertainty(data.val), error_indicator(data.val)
    return {
        **config, "epoch": last.get("epoch", 0), "train_loss": last.get("train_loss", math.nan),
        "epoch_val_roc_auc": last.get("val_roc_auc", math.nan),
        **{f"val_{name}": float(metric(scores, errors)) for name, metric in METRICS.items()},
        "best_epoch": head.best_epoch_, "iterations": len(head.history_), FINAL: final,
    }


def _nanmax(values: Any) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else math.nan


def packed_head_trainable(
    head: str, features: dict[str, FeatureSet], packs: list[list[dict[str, Any]]], *, halving: Any = None,
    cpus_per_trial: float = 1.0, custom_resources: dict[str, float] | None = None,
) -> Any:
    """:func:`fit_pack_trial` bound to ``features`` and ``packs`` (put into the object store once), each
    trial a CPU actor as in :func:`head_trainable`; its param space is ``{"pack": grid_search(range(len(packs)))}``."""
    from ray import tune

    if not features or not packs:
        raise ValueError("packed_head_trainable needs at least one FeatureSet and one pack")
    threads = max(1, int(cpus_per_trial))
    bound = tune.with_parameters(fit_pack_trial, head=head, features=features, packs=packs, halving=halving,
                                 threads=threads)
    return tune.with_resources(bound, {"cpu": cpus_per_trial, **(custom_resources or {})})


@contextmanager
def read_only_features() -> Iterator[None]:
    """Silence torch's warning about read-only NumPy input: cached features are mapped read-only
    (Arrow buffers, Ray's object store) by design, and fitting or scoring never writes to them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        yield


def head_trainable(
    head: str, features: dict[str, FeatureSet], *, cpus_per_trial: float = 1.0,
    custom_resources: dict[str, float] | None = None,
) -> Any:
    """:func:`fit_head_trial` bound to ``features`` (put into the object store once, here), each trial
    a CPU actor holding ``cpus_per_trial`` CPUs (and torch threads) plus ``custom_resources`` (e.g.
    ``{"cpu_node": 0.01}`` to stay on a cluster's CPU worker group)."""
    from ray import tune

    if not features:
        raise ValueError("head_trainable needs at least one FeatureSet")
    threads = max(1, int(cpus_per_trial))
    bound = tune.with_parameters(fit_head_trial, head=head, features=features, threads=threads)
    return tune.with_resources(bound, {"cpu": cpus_per_trial, **(custom_resources or {})})
