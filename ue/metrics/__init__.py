"""Metrics for uncertainty estimates (METHODS.md, "Metrics"); NumPy only, cheap to import.

Error detection (scores: higher = more uncertain; errors: 1 = the prediction is wrong):
``roc_auc``, ``risk_coverage_curve``, ``aurc``, ``oracle_aurc``, ``prr``.
Calibration (probabilities of being correct / of each class): ``ece``, ``brier``, ``nll``, ``accuracy``.
"""

from __future__ import annotations

from collections.abc import Callable

from numpy.typing import ArrayLike

from ue.metrics.calibration import accuracy, brier, ece, nll
from ue.metrics.error_detection import aurc, oracle_aurc, prr, risk_coverage_curve, roc_auc

METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "roc_auc": roc_auc,
    "aurc": aurc,
    "prr": prr,
}
"""Error-detection metrics by name, each ``f(scores, errors) -> float``."""

METRIC_MODES: dict[str, str] = {"roc_auc": "max", "aurc": "min", "prr": "max"}
"""Which direction is better for each of ``METRICS``, spelled as Ray Tune's ``mode``."""

__all__ = [
    "METRICS",
    "METRIC_MODES",
    "accuracy",
    "aurc",
    "brier",
    "ece",
    "nll",
    "oracle_aurc",
    "prr",
    "risk_coverage_curve",
    "roc_auc",
]
