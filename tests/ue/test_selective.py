"""ue.selective: the Clopper-Pearson bound, the fixed-sequence walk and its guarantee by simulation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from ue.selective import Threshold, accept, clopper_pearson_upper, select_threshold


def test_clopper_pearson_upper_by_hand() -> None:
    # k = 0: P(0 errors | rate u) = (1 - u)^n = delta  ->  u = 1 - delta^(1/n).
    assert clopper_pearson_upper(0, 10, 0.1) == pytest.approx(1 - 0.1 ** (1 / 10))
    assert clopper_pearson_upper(5, 5, 0.1) == 1.0
    assert clopper_pearson_upper(0, 0, 0.1) == 1.0


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 50), (3, 20), (17, 200), (99, 100)])
@pytest.mark.parametrize("delta", [0.05, 0.1])
def test_clopper_pearson_upper_matches_scipy_binomtest(k: int, n: int, delta: float) -> None:
    # A two-sided exact interval at level 1 - 2 delta puts delta in each tail, so its upper end is the
    # one-sided bound at level 1 - delta.
    expected = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * delta, method="exact").high
    assert clopper_pearson_upper(k, n, delta) == pytest.approx(expected, rel=1e-10)


def test_select_threshold_by_hand() -> None:
    scores = np.arange(40.0)
    errors = scores >= 30
    # target 0.1, delta 0.1: zero errors pass from m >= ln 0.1 / ln 0.9 = 21.9 items, so the walk starts
    # at m = 22; m = 22..30 have no error and pass; m = 31 has one error and bound 0.12 > 0.1: stop.
    th = select_threshold(scores, errors, target_error=0.1, delta=0.1)
    assert th == Threshold(29.0, 0.75, 0.0, pytest.approx(1 - 0.1 ** (1 / 30)), 40, 0.1, 0.1)


def test_walk_stops_at_the_first_failure() -> None:
    scores, errors = np.arange(100.0), np.zeros(100)
    errors[30] = 1  # at m = 100 the bound (1 error) is 0.038 and would pass, but m = 31 fails first
    th = select_threshold(scores, errors, target_error=0.1, delta=0.1)
    assert (th.threshold, th.coverage) == (29.0, 0.3)


def test_min_accepted_moves_the_first_test() -> None:
    scores, errors = np.arange(100.0), np.zeros(100)
    errors[0] = 1  # bound at m = 22 (first test by default) is 0.166; at m = 50 it is 0.076
    assert select_threshold(scores, errors, target_error=0.1, delta=0.1).coverage == 0.0
    th = select_threshold(scores, errors, target_error=0.1, delta=0.1, min_accepted=50)
    assert (th.threshold, th.coverage, th.accepted_error) == (99.0, 1.0, 0.01)


def test_nothing_accepted_when_the_first_group_fails() -> None:
    th = select_threshold(np.arange(50.0), np.ones(50), target_error=0.1, delta=0.1)
    assert (th.threshold, th.coverage, th.upper_bound) == (-math.inf, 0.0, 1.0)
    assert math.isnan(th.accepted_error)
    assert not accept([-1e30, 0.0], th).any()


def test_tied_scores_are_accepted_together_and_order_does_not_matter() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, size=400).astype(float)
    errors = rng.random(400) < scores / 40
    th = select_threshold(scores, errors, target_error=0.15, delta=0.1)
    assert th.threshold in scores
    assert th.coverage == np.mean(scores <= th.threshold) == np.mean(accept(scores, th))
    order = rng.permutation(400)
    assert select_threshold(scores[order], errors[order], target_error=0.15, delta=0.1) == th


def test_threshold_is_frozen() -> None:
    th = select_threshold(np.arange(40.0), np.zeros(40), target_error=0.1, delta=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        th.threshold = 0.0  # type: ignore[misc]


# Simulated calibration data: score s ~ U(0, 1), P(error | s) = sigmoid(A (s - C)).
A, C = 10.0, 0.7


def _true_risk(t: float) -> float:
    """Error rate of the items with s <= t: (1/t) int_0^t sigmoid(A (s - C)) ds in closed form."""
    return 0.0 if t <= 0 else (np.log1p(np.exp(A * (t - C))) - np.log1p(np.exp(-A * C))) / (A * t)


def test_guarantee_holds_on_simulated_data() -> None:
    target, delta, n_cal, repeats = 0.1, 0.1, 200, 200
    assert _true_risk(0.70) == pytest.approx(target, abs=2e-3)  # so the best safe coverage is ~0.70
    rng = np.random.default_rng(0)
    held, coverage = [], []
    for _ in range(repeats):
        s = rng.random(n_cal)
        errors = rng.random(n_cal) < 1 / (1 + np.exp(-A * (s - C)))
        th = select_threshold(s, errors, target_error=target, delta=delta)
        held.append(_true_risk(th.threshold) <= target)
        coverage.append(th.coverage)
    # Over 4000 repeats the bound holds in 95% at n_cal = 200. As n_cal grows the walk gets closer to
    # the boundary and the rate falls towards 1 - delta (0.905 at n_cal = 5000): too close for 200 draws.
    assert np.mean(held) >= 1 - delta
    assert np.mean(coverage) > 0.45  # not vacuous


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"target_error": 0.0, "delta": 0.1}, "target_error must lie in"),
        ({"target_error": 0.1, "delta": 1.0}, "delta must lie in"),
        ({"target_error": "0.1", "delta": 0.1}, "target_error must be a number"),
        ({"target_error": 0.1, "delta": 0.1, "min_accepted": 0}, "min_accepted must be >= 1"),
    ],
)
def test_select_threshold_rejects_bad_settings(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        select_threshold([0.1, 0.2], [0, 1], **kwargs)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: clopper_pearson_upper(3, 2, 0.1), "k must be <= n"),
        (lambda: clopper_pearson_upper(-1, 2, 0.1), "k must be >= 0"),
        (lambda: clopper_pearson_upper(1.5, 2, 0.1), "k must be an integer"),
        (lambda: clopper_pearson_upper(1, 2, 0.0), "delta must lie in"),
        (lambda: select_threshold([0.1, 0.2], [0, 1, 1], target_error=0.1, delta=0.1), "scores has 2"),
        (lambda: accept([0.1, float("inf")], 0.5), "scores has 1 non-finite"),
        (lambda: accept([0.1], float("nan")), "threshold must not be NaN"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        call()
