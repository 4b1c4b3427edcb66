"""Error-detection metrics: how well an uncertainty score ranks wrong predictions above right ones.

Conventions (METHODS.md, "Metrics"):

* ``scores``: shape (n,), finite floats, **higher = more uncertain** (more likely to be wrong).
* ``errors``: shape (n,), 0/1 or bool, ``errors[i] = 1`` when the frozen model's prediction ``i``
  is wrong (``e = 1[pred != label]``).
* Ties: items with equal scores form one block. ROC-AUC gives them the average rank; the
  risk-coverage curve spreads a block's errors evenly over its positions, which is the expected
  curve over all orderings of the block. No result depends on the order of the input.

References: Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks", NeurIPS 2017
(risk-coverage curve, AURC); arXiv 2505.15443 (ALIEN/AdUE), which reports ROC-AUC, PRR and
RC-AUC(AURC) for error detection.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ue.metrics._checks import as_array, as_binary, same_length

__all__ = ["aurc", "oracle_aurc", "prr", "risk_coverage_curve", "roc_auc"]


def _scores_and_errors(scores: ArrayLike, errors: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s, e = as_array(scores, "scores"), as_binary(errors, "errors")
    same_length(scores=s, errors=e)
    return s, e


def roc_auc(scores: ArrayLike, errors: ArrayLike) -> float:
    """ROC-AUC of ``scores`` as a detector of ``errors``: P(score of an error > score of a correct one).

    Computed as the Mann-Whitney U statistic with average ranks for ties, i.e. the value of
    ``sklearn.metrics.roc_auc_score(errors, scores)`` up to float rounding.

    Args:
        scores: shape (n,), higher = more uncertain.
        errors: shape (n,), 1 where the prediction is wrong.

    Returns:
        A float in [0, 1]; 0.5 = uninformative. ``nan`` (no warning, no exception) when ``errors``
        holds a single class, because the AUC is undefined then; aggregate with ``np.nanmean``.

    Raises:
        ValueError: naming the argument that is not 1-D, finite, binary (``errors``) or equally long.
    """
    s, e = _scores_and_errors(scores, errors)
    n_err = e.sum()
    n_ok = e.size - n_err
    if n_err == 0 or n_ok == 0:
        return float("nan")
    u = _average_ranks(s)[e == 1].sum() - n_err * (n_err + 1) / 2
    return float(u / (n_err * n_ok))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing the mean of their ranks (scipy's ``rankdata``)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2)[inverse]


def risk_coverage_curve(scores: ArrayLike, errors: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve: accept the k most certain items, k = 1..n (Geifman & El-Yaniv 2017).

    Items are sorted by score ascending (most certain first); ``risk[k-1]`` is the number of errors
    among the first k items divided by k. Within a block of tied scores the block's errors are
    spread evenly, so the curve is the expectation over the orderings of each block.

    Args:
        scores: shape (n,), higher = more uncertain.
        errors: shape (n,), 1 where the prediction is wrong.

    Returns:
        ``(coverage, risk)``, each of shape (n,): ``coverage = k / n`` and the selective risk at k.

    Raises:
        ValueError: as ``roc_auc``.
    """
    s, e = _scores_and_errors(scores, errors)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    block_error_rate = np.bincount(inverse, weights=e) / counts
    expected_errors = np.cumsum(np.repeat(block_error_rate, counts))
    k = np.arange(1, s.size + 1)
    return k / s.size, expected_errors / k


def aurc(scores: ArrayLike, errors: ArrayLike) -> float:
    """Area under the risk-coverage curve (AURC, "RC-AUC"): the mean of ``risk_coverage_curve``'s risk.

    Lower is better; the best value any score can reach is ``oracle_aurc(errors)``, a score that
    carries no information gets ``mean(errors)``.

    Args:
        scores: shape (n,), higher = more uncertain.
        errors: shape (n,), 1 where the prediction is wrong.

    Raises:
        ValueError: as ``roc_auc``.
    """
    return float(np.mean(risk_coverage_curve(scores, errors)[1]))


def oracle_aurc(errors: ArrayLike) -> float:
    """AURC of the oracle ordering, which accepts every correct item before any error.

    Args:
        errors: shape (n,), 1 where the prediction is wrong.

    Raises:
        ValueError: if ``errors`` is not 1-D, non-empty and binary.
    """
    e = as_binary(errors, "errors")
    # The errors themselves are the oracle score: correct items (0) come first, ties do not matter.
    return aurc(e, e)


def prr(scores: ArrayLike, errors: ArrayLike) -> float:
    """Prediction rejection ratio: ``(AURC_random - AURC_score) / (AURC_random - AURC_oracle)``.

    1 = the oracle ordering, 0 = no better than random rejection, negative = worse than random.
    ``AURC_random`` is the expected AURC of a random ordering, which equals the error rate because
    the expected risk at every coverage is the error rate. PRR as used for error detection in
    arXiv 2505.15443 (ALIEN/AdUE), here on the risk-coverage curve of Geifman & El-Yaniv 2017.

    Args:
        scores: shape (n,), higher = more uncertain.
        errors: shape (n,), 1 where the prediction is wrong.

    Returns:
        A float <= 1, or ``nan`` (no exception) when there are no errors or only errors, where
        oracle and random coincide and the ratio is undefined.

    Raises:
        ValueError: as ``roc_auc``.
    """
    s, e = _scores_and_errors(scores, errors)
    random = float(e.mean())
    if random in (0.0, 1.0):
        return float("nan")
    return (random - aurc(s, e)) / (random - oracle_aurc(e))
