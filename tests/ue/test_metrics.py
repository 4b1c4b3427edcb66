"""ue.metrics: numbers against sklearn and hand computations, tie handling, input validation."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ue.metrics import (
    METRIC_MODES,
    METRICS,
    accuracy,
    aurc,
    brier,
    ece,
    nll,
    oracle_aurc,
    prr,
    risk_coverage_curve,
    roc_auc,
)


def _scored_errors(seed: int, n: int = 500, *, tied: bool) -> tuple[np.ndarray, np.ndarray]:
    """Errors that the score predicts somewhat; ``tied`` rounds scores to 5 values."""
    rng = np.random.default_rng(seed)
    errors = rng.random(n) < 0.3
    scores = rng.normal(size=n) + errors
    return (np.round(scores) if tied else scores), errors


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_sklearn(seed: int, tied: bool) -> None:
    scores, errors = _scored_errors(seed, tied=tied)
    assert roc_auc(scores, errors) == pytest.approx(roc_auc_score(errors, scores), abs=1e-12)


def test_roc_auc_is_nan_with_one_class() -> None:
    assert math.isnan(roc_auc([0.1, 0.2, 0.3], [0, 0, 0]))
    assert math.isnan(roc_auc([0.1, 0.2, 0.3], [True, True, True]))


def test_risk_coverage_curve_by_hand() -> None:
    coverage, risk = risk_coverage_curve([0.4, 0.1, 0.3, 0.2], [1, 0, 0, 1])
    # Sorted by score the errors read 0, 1, 0, 1: risk = 0/1, 1/2, 1/3, 2/4.
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 2, 1 / 3, 2 / 4])


def test_risk_coverage_curve_averages_over_tied_orderings() -> None:
    _, risk = risk_coverage_curve([0.1, 0.5, 0.5, 0.9], [0, 1, 0, 1])
    # The tie at 0.5 reads (1, 0) -> risk 0, 1/2, 1/3, 1/2 or (0, 1) -> 0, 0, 1/3, 1/2;
    # the mean of the two orderings is 0, 1/4, 1/3, 1/2.
    np.testing.assert_allclose(risk, [0.0, 1 / 4, 1 / 3, 1 / 2])


def test_aurc_oracle_and_prr_by_hand() -> None:
    scores, errors = [0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1]
    # aurc = mean(0, 1/2, 1/3, 1/2) = 1/3.
    # Oracle order 0, 0, 1, 1: risk 0, 0, 1/3, 2/4, so oracle aurc = (1/3 + 1/2) / 4 = 5/24.
    # Random = error rate = 1/2, so prr = (1/2 - 1/3) / (1/2 - 5/24) = (1/6) / (7/24) = 4/7.
    assert aurc(scores, errors) == pytest.approx(1 / 3)
    assert oracle_aurc(errors) == pytest.approx(5 / 24)
    assert prr(scores, errors) == pytest.approx(4 / 7)


def test_prr_oracle_random_and_reversed() -> None:
    rng = np.random.default_rng(0)
    errors = rng.random(20_000) < 0.2
    perfect = errors + rng.random(errors.size)  # every error scores above every correct item
    assert prr(perfect, errors) == pytest.approx(1.0)
    assert aurc(perfect, errors) == pytest.approx(oracle_aurc(errors))
    assert abs(prr(rng.random(errors.size), errors)) < 0.03
    assert prr(-perfect, errors) < -0.5
    assert prr(np.zeros(errors.size), errors) == pytest.approx(0.0, abs=1e-12)


def test_prr_is_nan_without_errors_or_without_correct_items() -> None:
    assert math.isnan(prr([0.1, 0.2], [0, 0]))
    assert math.isnan(prr([0.1, 0.2], [1, 1]))


@pytest.mark.parametrize("seed", [0, 1])
def test_permuting_the_input_changes_nothing_even_with_ties(seed: int) -> None:
    scores, errors = _scored_errors(seed, tied=True)
    order = np.random.default_rng(100 + seed).permutation(scores.size)
    for name, metric in METRICS.items():
        assert metric(scores[order], errors[order]) == metric(scores, errors), name
    curve, permuted = risk_coverage_curve(scores, errors), risk_coverage_curve(scores[order], errors[order])
    np.testing.assert_array_equal(curve[1], permuted[1])


def test_metric_registry_names_and_modes() -> None:
    assert set(METRICS) == set(METRIC_MODES) == {"roc_auc", "aurc", "prr"}


def test_ece_by_hand() -> None:
    # Two bins. (0, 0.5]: {0.1, 0.4}, conf 0.25, acc 1/2 -> 2/4 * 0.25; (0.5, 1]: {0.6, 0.9}, conf 0.75,
    # acc 1 -> 2/4 * 0.25. ECE = 0.25.
    assert ece([0.1, 0.4, 0.6, 0.9], [0, 1, 1, 1], n_bins=2) == pytest.approx(0.25)
    assert ece([0.75] * 4, [1, 1, 1, 0]) == pytest.approx(0.0)


def test_ece_bin_edges_are_right_closed_and_zero_is_in_the_first_bin() -> None:
    # 0.5 closes the first bin: |1 - 0.5| / 2 + |0 - 0.9| / 2 = 0.7 (pooled with 0.9 it would be 0.2).
    assert ece([0.5, 0.9], [1, 0], n_bins=2) == pytest.approx(0.7)
    # 0.0 and 0.2 share the first bin: |1/2 - 0.1| = 0.4.
    assert ece([0.0, 0.2], [1, 0], n_bins=2) == pytest.approx(0.4)
    assert ece([1.0], [0], n_bins=15) == pytest.approx(1.0)


def test_brier_by_hand() -> None:
    probs = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]
    # Row 0, label 0: 0.3^2 + 0.2^2 + 0.1^2 = 0.14; row 1, label 2: 0.1^2 + 0.8^2 + 0.9^2 = 1.46; mean 0.8.
    assert brier(probs, [0, 2]) == pytest.approx(0.8)
    # Binary form: ((0.9 - 1)^2 + (0.2 - 1)^2) / 2 = (0.01 + 0.64) / 2.
    assert brier([0.9, 0.2], [1, 1]) == pytest.approx(0.325)
    assert brier([0.9, 0.2], [True, False]) == pytest.approx((0.01 + 0.04) / 2)


def test_nll_by_hand() -> None:
    probs = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]
    assert nll(probs, [0, 2]) == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2)
    assert nll([0.9, 0.2], [1, 0]) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    assert nll([[1.0, 0.0]], [1]) == pytest.approx(-math.log(1e-12))  # clipped, not inf


def test_accuracy_by_hand() -> None:
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == pytest.approx(0.75)
    assert accuracy(np.array([0.0, 1.0]), [0, 1]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: roc_auc([0.1, 0.2], [0, 1, 1]), "scores has 2, errors has 3"),
        (lambda: aurc([[0.1, 0.2]], [0, 1]), "scores must be 1-D"),
        (lambda: prr([0.1, float("nan")], [0, 1]), "scores has 1 non-finite"),
        (lambda: roc_auc([0.1, 0.2], [0, 2]), "errors must hold only 0/1"),
        (lambda: oracle_aurc([]), "errors is empty"),
        (lambda: aurc(["a", "b"], [0, 1]), "scores must be numeric"),
        (lambda: ece([0.5, 1.2], [0, 1]), "confidence must lie in [0, 1]"),
        (lambda: ece([0.5], [0.5]), "correct must hold only 0/1"),
        (lambda: ece([0.5], [1], n_bins=0), "n_bins must be >= 1"),
        (lambda: ece([0.5], [1], n_bins=2.0), "n_bins must be an integer"),
        (lambda: brier([[0.5, 0.6]], [0]), "probs rows must sum to 1"),
        (lambda: brier([[2.0, -1.0]], [0]), "pass probabilities, not logits"),
        (lambda: brier([[0.5, 0.5]], [2]), "labels must lie in [0, 2)"),
        (lambda: nll(np.full((1, 1, 2), 0.5), [0]), "probs must be 1-D (binary) or 2-D"),
        (lambda: nll([[0.5, 0.5]], [0.5]), "labels must hold integer class indices"),
        (lambda: nll([0.5], [2]), "labels must hold only 0/1"),
        (lambda: accuracy([1, 2], [1]), "preds has 2, labels has 1"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        call()
