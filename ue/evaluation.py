"""Every metric of METHODS.md for one uncertainty score, and the printed comparison table.

Error detection judges the score ``U`` (higher = more uncertain) against ``e = 1[pred != label]``:
ROC-AUC, AURC (+ the oracle AURC of the same errors) and PRR. Calibration needs a probability of
being correct: ``1 - U`` for heads whose score is itself an error probability (``msp``,
``temperature``, ``alien``, ``adue``: ``error_probability = True``), and the model's own
``max_c softmax(logits)_c`` for the others (``entropy`` and the Mahalanobis distances are not
probabilities, so their ECE/Brier/NLL are the model's). Brier and NLL use the binary form on that
confidence against ``correct = 1 - e``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.special import softmax

from ue.metrics import accuracy, aurc, brier, ece, nll, oracle_aurc, prr, roc_auc

TABLE_COLUMNS = ("accuracy", "roc_auc", "aurc", "prr", "ece")
"""Columns of the printed table (METHODS.md); every metric is in ``metrics.json``."""
_TITLES = {"accuracy": "accuracy", "roc_auc": "ROC-AUC", "aurc": "AURC", "prr": "PRR", "ece": "ECE"}


def evaluate_scores(
    scores: np.ndarray,
    *,
    pred: np.ndarray,
    label: np.ndarray,
    logits: np.ndarray,
    error_probability: bool,
    n_bins: int = 15,
) -> dict[str, float | int | str]:
    """All metrics of one score on one split.

    Args:
        scores: (n,) uncertainty, higher = more uncertain.
        pred, label: (n,) the frozen model's predictions and the gold labels.
        logits: (n, C) the model's logits (confidence for heads that are not error probabilities).
        error_probability: the score estimates P(error), so ``1 - U`` is the confidence.
        n_bins: equal-width ECE bins.

    Returns:
        ``accuracy``, ``roc_auc``, ``aurc``, ``oracle_aurc``, ``prr``, ``ece``, ``brier``, ``nll``,
        plus ``n``, ``error_rate`` and ``confidence`` (``"1-U"`` or ``"max_prob"``). ROC-AUC and PRR
        are nan when the split has no errors or only errors.
    """
    errors = (np.asarray(pred) != np.asarray(label)).astype(np.int64)
    correct = 1 - errors
    if error_probability:
        confidence, source = np.clip(1.0 - np.asarray(scores, dtype=np.float64), 0.0, 1.0), "1-U"
    else:
        confidence, source = softmax(np.asarray(logits, dtype=np.float64), axis=1).max(axis=1), "max_prob"
    return {
        "n": int(len(errors)),
        "error_rate": float(errors.mean()),
        "accuracy": accuracy(pred, label),
        "roc_auc": roc_auc(scores, errors),
        "aurc": aurc(scores, errors),
        "oracle_aurc": oracle_aurc(errors),
        "prr": prr(scores, errors),
        "ece": ece(confidence, correct, n_bins=n_bins),
        "brier": brier(confidence, correct),
        "nll": nll(confidence, correct),
        "confidence": source,
    }


def format_table(
    rows: Mapping[str, Mapping[str, float]], *, title: str, columns: Sequence[str] = TABLE_COLUMNS
) -> str:
    """A plain-text table: one row per head, metrics x 100 with two decimals (nan shown as ``-``)."""
    width = max([len("head"), *map(len, rows)])
    header = f"{'head':<{width}}" + "".join(f"{_TITLES.get(c, c):>10}" for c in columns)
    lines = [f"{title} (all x100)", header, "-" * len(header)]
    for name, metrics in rows.items():
        cells = "".join(f"{_cell(metrics.get(c, math.nan)):>10}" for c in columns)
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"
