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
