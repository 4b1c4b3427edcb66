"""Selective prediction with a guarantee on the error rate of the accepted items (METHODS.md, last section).

On a calibration split, ``select_threshold`` picks the largest threshold ``t`` whose one-sided
Clopper-Pearson upper bound on the error rate of the accepted items is at most ``target_error``,
at confidence ``1 - delta``. Batch scoring then emits ``accept = score <= t`` (``accept``).

Conventions: ``scores`` of shape (n,), higher = more uncertain; ``errors`` of shape (n,), 1 where
the frozen model's prediction is wrong. Risk-coverage framing: Geifman & El-Yaniv, "Selective
Classification for Deep Neural Networks", NeurIPS 2017; the bound: Clopper & Pearson, Biometrika
1934; fixed-sequence testing for risk control: Angelopoulos et al., "Learn then Test", 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ue.metrics._checks import as_array, as_binary, int_at_least, open_unit_interval, same_length

__all__ = ["Threshold", "accept", "clopper_pearson_upper", "select_threshold"]


@dataclass(frozen=True)
class Threshold:
    """The outcome of ``select_threshold``; accept an item when ``score <= threshold``.

    Attributes:
        threshold: the largest accepted calibration score; ``-inf`` when nothing can be accepted.
        coverage: fraction of the calibration items accepted, in [0, 1].
        accepted_error: error rate among the accepted calibration items (``nan`` when none are).
        upper_bound: Clopper-Pearson upper bound on that rate at confidence ``1 - delta`` (1.0 when
            nothing is accepted).
        n_calibration: number of calibration items.
        target_error: the requested bound on the accepted error rate.
        delta: the allowed probability that the bound fails.
    """

    threshold: float
    coverage: float
    accepted_error: float
    upper_bound: float
    n_calibration: int
    target_error: float
    delta: float


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """One-sided exact (Clopper-Pearson) upper confidence bound on a binomial rate.

    ``P(rate <= bound) >= 1 - delta`` after seeing ``k`` errors in ``n`` trials; the bound is
    ``Beta(k + 1, n - k).ppf(1 - delta)``, and 1.0 when ``k == n`` (including ``n == 0``).

    Raises:
        ValueError: if ``k`` or ``n`` is not an integer with ``0 <= k <= n``, or ``delta`` not in (0, 1).
    """
    k, n = int_at_least(k, "k", 0), int_at_least(n, "n", 0)
    if k > n:
        raise ValueError(f"k must be <= n, got k={k}, n={n}")
    delta = open_unit_interval(delta, "delta")
    return float(_cp_upper(np.array([k]), np.array([n]), delta)[0])


def _cp_upper(k: np.ndarray, n: np.ndarray, delta: float) -> np.ndarray:
    """Vectorised ``clopper_pearson_upper`` for validated integer arrays of equal shape."""
    # Imported here: scipy.stats takes ~0.5 s to import and the scoring path only needs ``accept``.
    from scipy.stats import beta

    all_wrong = k >= n
    bound = beta.ppf(1.0 - delta, k + 1, np.where(all_wrong, 1, n - k))
    return np.where(all_wrong, 1.0, bound)


def select_threshold(
    scores: ArrayLike,
    errors: ArrayLike,
    *,
    target_error: float,
    delta: float,
    min_accepted: int = 1,
) -> Threshold:
    """Largest-coverage threshold whose accepted error rate is ``<= target_error`` w.p. ``>= 1 - delta``.

    Fixed-sequence testing from most to least certain: the candidates are the distinct calibration
    scores in ascending order, each accepting every item with ``score <= t`` (tied items together).
    Walking up, a candidate passes when the Clopper-Pearson upper bound of its accepted error rate
    is ``<= target_error``; the walk stops at the first failure and returns the last pass. Stopping
    there is what lets every test run at the full level ``delta`` with no multiplicity correction.

    The sequence starts at the first candidate that could pass at all, i.e. that accepts at least
    ``min_accepted`` items and enough items that zero errors would pass (``1 - delta**(1/m) <=
    target_error``): smaller sets always fail, so starting earlier would always return ``-inf``.
    Both rules look only at the scores, never at the errors, so the order stays fixed in advance.
    Raising ``min_accepted`` trades the smallest coverages for a sturdier first test.

    The candidates come from the calibration scores, so the guarantee holds conditionally on them
    and approximately for fresh data; ``tests/ue/test_selective.py`` checks it by simulation.

    Args:
        scores: shape (n,), higher = more uncertain.
        errors: shape (n,), 1 where the prediction is wrong.
        target_error: bound on the error rate of the accepted items, in (0, 1).
        delta: allowed probability that the bound fails, in (0, 1).
        min_accepted: fewest calibration items the first tested threshold must accept, >= 1.

    Returns:
        A ``Threshold``; ``threshold = -inf`` and ``coverage = 0`` when even the first candidate fails.

    Raises:
        ValueError: naming the argument that is malformed or out of range.
    """
    s, e = as_array(scores, "scores"), as_binary(errors, "errors")
    same_length(scores=s, errors=e)
    target_error = open_unit_interval(target_error, "target_error")
    delta = open_unit_interval(delta, "delta")
    min_accepted = int_at_least(min_accepted, "min_accepted", 1)

    values, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    n_accepted = np.cumsum(counts)
    n_wrong = np.cumsum(np.bincount(inverse, weights=e)).round().astype(np.int64)
    upper = _cp_upper(n_wrong, n_accepted, delta)
    zero_errors_pass = _cp_upper(np.zeros_like(n_accepted), n_accepted, delta) <= target_error
    could_pass = (n_accepted >= min_accepted) & zero_errors_pass
    last = _last_pass(upper <= target_error, start=int(np.argmax(could_pass))) if could_pass.any() else None

    if last is None:
        return Threshold(-np.inf, 0.0, float("nan"), 1.0, s.size, target_error, delta)
    return Threshold(
        threshold=float(values[last]),
        coverage=float(n_accepted[last] / s.size),
        accepted_error=float(n_wrong[last] / n_accepted[last]),
        upper_bound=float(upper[last]),
        n_calibration=s.size,
        target_error=target_error,
        delta=delta,
    )


def _last_pass(passes: np.ndarray, *, start: int) -> int | None:
    """Index of the last pass in the unbroken run of passes beginning at ``start``; None if none."""
    failures = np.flatnonzero(~passes[start:])
    run = failures[0] if failures.size else passes.size - start
    return start + int(run) - 1 if run > 0 else None


def accept(scores: ArrayLike, threshold: float | Threshold) -> np.ndarray:
    """Boolean mask of shape (n,): ``scores <= threshold`` (higher score = more uncertain).

    Args:
        scores: shape (n,), finite.
        threshold: a float (``-inf`` accepts nothing) or a ``Threshold`` from ``select_threshold``.

    Raises:
        ValueError: if ``scores`` is not 1-D, non-empty and finite, or ``threshold`` is NaN.
    """
    t = threshold.threshold if isinstance(threshold, Threshold) else float(threshold)
    if np.isnan(t):
        raise ValueError("threshold must not be NaN")
    return as_array(scores, "scores") <= t
