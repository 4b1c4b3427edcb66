"""Calibration and accuracy metrics on predicted probabilities.

Here probabilities are of being *correct* (or of each class), the opposite orientation to the
uncertainty scores of ``ue.metrics.error_detection``: for ALIEN/AdUE pass ``1 - U`` as the
confidence, for the model itself ``max_c p_c`` (METHODS.md, "Metrics").
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ue.metrics._checks import (
    as_binary,
    as_labels,
    as_probabilities,
    as_probability_rows,
    int_at_least,
    same_length,
)

__all__ = ["accuracy", "brier", "ece", "nll"]

NLL_FLOOR = 1e-12
"""Probabilities are clipped here before the log so a confident mistake costs ~27.6 nats, not inf."""


def ece(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width bins (Guo et al., "On Calibration of Modern
    Neural Networks", ICML 2017).

    ``ECE = sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|``. Bin ``i`` covers
    ``(i / n_bins, (i + 1) / n_bins]``; a confidence of exactly 0 goes to the first bin. Empty bins
    contribute nothing.

    Args:
        confidence: shape (n,), in [0, 1], the predicted probability that the prediction is correct.
        correct: shape (n,), 0/1 or bool, 1 where the prediction is correct.
        n_bins: number of bins, >= 1.

    Returns:
        A float in [0, 1]; 0 = perfectly calibrated on these bins.

    Raises:
        ValueError: naming the argument that is malformed or out of range.
    """
    conf, hit = as_probabilities(confidence, "confidence"), as_binary(correct, "correct")
    same_length(confidence=conf, correct=hit)
    n_bins = int_at_least(n_bins, "n_bins", 1)
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    # side="left" puts a value equal to an edge into the bin that edge closes: (lower, upper].
    bins = np.searchsorted(inner_edges, conf, side="left")
    count = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=hit, minlength=n_bins) - np.bincount(bins, weights=conf, minlength=n_bins)
    # |sum(hit) - sum(conf)| per bin is |B| * |acc - conf|, so dividing by n gives the weighted gap.
    return float(np.abs(gap[count > 0]).sum() / conf.size)


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Brier score (Brier 1950); lower is better. The input's shape picks one of two forms:

    * multiclass, ``probs`` of shape (n, C) with rows summing to 1 and integer ``labels`` of shape
      (n,) in [0, C): ``mean_i sum_c (p_ic - 1[labels_i == c])^2``, in [0, 2];
    * binary, ``probs`` of shape (n,) = P(outcome = 1), e.g. the probability of being correct, and
      0/1 ``labels`` of shape (n,): ``mean_i (p_i - labels_i)^2``, in [0, 1].

    The binary form is half the multiclass form applied to ``[1 - p, p]``; report which one you use.

    Raises:
        ValueError: naming the argument that is malformed, out of range or of the wrong length.
    """
    p, y = _probs_and_labels(probs, labels)
    if p.ndim == 1:
        return float(np.mean((p - y) ** 2))
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def nll(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log-likelihood ``mean_i -log max(p_i[labels_i], 1e-12)``, in nats; lower is better.

    Takes the same two forms as ``brier``: (n, C) class probabilities with integer labels, or (n,)
    probabilities of outcome 1 with 0/1 labels (then ``p_i[1] = p_i`` and ``p_i[0] = 1 - p_i``).

    Raises:
        ValueError: naming the argument that is malformed, out of range or of the wrong length.
    """
    p, y = _probs_and_labels(probs, labels)
    p_label = np.where(y == 1, p, 1.0 - p) if p.ndim == 1 else p[np.arange(len(y)), y]
    return float(np.mean(-np.log(np.maximum(p_label, NLL_FLOOR))))


def _probs_and_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(probs, labels)``: (n,) float and 0/1 int, or (n, C) rows and int labels in [0, C)."""
    if np.ndim(probs) == 1:
        p, y = as_probabilities(probs, "probs"), as_binary(labels, "labels").astype(np.int64)
    elif np.ndim(probs) == 2:
        p = as_probability_rows(probs, "probs")
        y = as_labels(labels, "labels", n_classes=p.shape[1])
    else:
        raise ValueError(f"probs must be 1-D (binary) or 2-D (n, C), got shape {np.shape(probs)}")
    same_length(probs=p, labels=y)
    return p, y


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of ``preds`` equal to ``labels``; both of shape (n,) with integer class indices.

    Raises:
        ValueError: if either is not 1-D, non-empty, finite and integer-valued, or lengths differ.
    """
    yhat, y = as_labels(preds, "preds"), as_labels(labels, "labels")
    same_length(preds=yhat, labels=y)
    return float(np.mean(yhat == y))
