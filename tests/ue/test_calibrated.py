"""ue.heads.Calibrated: the Platt map against a hand-written Newton fit, the isotonic map against a
hand-written pool-adjacent-violators fit, the val split by id, calibration quality, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ue.data import id_share
from ue.heads import MSP, Alien, Calibrated, Entropy, load_head
from ue.heads.calibrated import SALT
from ue.heads.modules import Classifier, ClassifierSpec
from ue.metrics import ece, roc_auc


def miscalibrated(n: int, seed: int, *, num_labels: int = 3) -> dict[str, np.ndarray]:
    """Logits whose softmax is overconfident: the model is right with prob sigmoid(logit(p) / 3)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, num_labels))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).max(1)
    right = rng.random(n) < 1.0 / (1.0 + np.exp(-np.log(p / (1 - p + 1e-12)) / 3.0))
    pred = logits.argmax(1)
    label = np.where(right, pred, (pred + 1) % num_labels)
    return {"id": np.array([f"row-{seed}-{i}" for i in range(n)]), "logits": logits, "pred": pred, "label": label}


def newton_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Unpenalised maximum-likelihood weights (..., intercept) of P(y=1) = sigmoid(x w + c), x (n, k)."""
    x = np.c_[x, np.ones(len(x))]
    w = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-x @ w))
        w -= np.linalg.solve(x.T @ (x * (p * (1 - p))[:, None]), x.T @ (p - y))
    return w


def newton_logistic(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of P(y=1) = sigmoid(a z + b)."""
    a, b = newton_fit(z[:, None], y)
    return float(a), float(b)


def pav(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares non-decreasing fit of y on x: (sorted unique x, fitted value at each)."""
    xs, inverse = np.unique(x, return_inverse=True)
    sums, counts = np.bincount(inverse, weights=y), np.bincount(inverse).astype(float)
    blocks = [[s, c, 1] for s, c in zip(sums, counts, strict=True)]  # sum, weight, number of x values
    merged: list[list[float]] = []
    for b in blocks:
        merged.append(b)
        while len(merged) > 1 and merged[-2][0] / merged[-2][1] >= merged[-1][0] / merged[-1][1]:
            s, c, k = merged.pop()
            merged[-1] = [merged[-1][0] + s, merged[-1][1] + c, merged[-1][2] + k]
    return xs, np.concatenate([[s / c] * int(k) for s, c, k in merged])


def test_platt_is_the_maximum_likelihood_sigmoid_of_the_calibration_share():
    train, val, test = miscalibrated(10, 0), miscalibrated(3000, 1), miscalibrated(500, 2)
    head = Calibrated(head=MSP(), method="platt", fraction=0.5, seed=1).fit(train, val)
    share = id_share(list(val["id"]), 0.5, seed=1, salt=SALT)
    assert head.n_calibration_ == share.sum() and 1300 < share.sum() < 1700
    raw = MSP().fit({}).uncertainty({"logits": val["logits"][share]})
    x = np.log(raw) - np.log1p(-raw)
    z = (x - x.mean()) / x.std()
    a, b = newton_logistic(z, (val["pred"] != val["label"])[share].astype(float))
    assert head.slope_ == pytest.approx(a, rel=1e-4) and head.intercept_ == pytest.approx(b, rel=1e-4, abs=1e-6)
    t_raw = MSP().fit({}).uncertainty(test)
    t_x = np.log(t_raw) - np.log1p(-t_raw)
    expected = 1 / (1 + np.exp(-(a * (t_x - x.mean()) / x.std() + b)))
    np.testing.assert_allclose(head.uncertainty(test), expected, rtol=1e-4)
    errors = test["pred"] != test["label"]
    assert roc_auc(head.uncertainty(test), errors) == pytest.approx(roc_auc(t_raw, errors), abs=1e-12)


def test_beta_is_the_maximum_likelihood_fit_on_log_s_and_minus_log_one_minus_s():
    train, val, test = miscalibrated(10, 0), miscalibrated(3000, 1), miscalibrated(500, 2)
    head = Calibrated(head=MSP(), fraction=0.5, seed=1).fit(train, val)
    assert head.method == "beta"
    share = id_share(list(val["id"]), 0.5, seed=1, salt=SALT)
    raw = MSP().fit({}).uncertainty({"logits": val["logits"][share]})
    x = np.c_[np.log(raw), -np.log1p(-raw)]
    a, b, c = newton_fit(x, (val["pred"] != val["label"])[share].astype(float))
    assert a > 0 and b > 0  # both terms kept
    np.testing.assert_allclose([*head.beta_coef_, head.intercept_], [a, b, c], rtol=1e-4)
    t_raw = MSP().fit({}).uncertainty(test)
    expected = 1 / (1 + np.exp(-(a * np.log(t_raw) - b * np.log1p(-t_raw) + c)))
    np.testing.assert_allclose(head.uncertainty(test), expected, rtol=1e-4)


def test_beta_drops_a_term_whose_coefficient_would_make_the_map_decrease():
    rng = np.random.default_rng(0)
    n = 4000
    s = rng.uniform(0.01, 0.99, n)
    # P(error) rises with log(s) but falls as s nears 1: the free fit has b < 0.
    p_err = 1 / (1 + np.exp(-(2.0 * np.log(s) + 1.5 * np.log1p(-s) + 1.0)))
    e = (rng.random(n) < p_err).astype(float)
    free = newton_fit(np.c_[np.log(s), -np.log1p(-s)], e)
    assert free[1] < 0
    a, c = newton_fit(np.log(s)[:, None], e)
    head = Calibrated(head=MSP())
    head._fit_beta(s, e)
    np.testing.assert_allclose([*head.beta_coef_, head.intercept_], [a, 0.0, c], rtol=1e-4, atol=1e-9)
    grid = np.linspace(0.001, 0.999, 500)
    assert np.all(np.diff(head.transform(grid)) >= 0)


def test_beta_needs_a_score_in_the_unit_interval():
    with pytest.raises(ValueError, match="method='beta' maps scores in"):
        Calibrated(head=Entropy(), method="beta").fit(miscalibrated(10, 0), miscalibrated(200, 1))


def test_calibration_brings_the_ece_of_an_overconfident_score_down():
    train, val, test = miscalibrated(10, 0), miscalibrated(4000, 1), miscalibrated(4000, 3)
    correct = (test["pred"] == test["label"]).astype(float)
    before = ece(1 - MSP().fit({}).uncertainty(test), correct)
    for method in ("beta", "platt", "isotonic"):
        after = ece(1 - Calibrated(head=MSP(), method=method).fit(train, val).uncertainty(test), correct)
        assert before > 0.12 and after < 0.035, (method, before, after)


def test_isotonic_is_the_pool_adjacent_violators_fit_interpolated_between_knots():
    train, val, test = miscalibrated(10, 0), miscalibrated(600, 4), miscalibrated(300, 5)
    head = Calibrated(head=Entropy(), method="isotonic", fraction=0.4, seed=7).fit(train, val)
    share = id_share(list(val["id"]), 0.4, seed=7, salt=SALT)
    raw = Entropy().fit({}).uncertainty({"logits": val["logits"][share]})
    xs, fitted = pav(raw, (val["pred"] != val["label"])[share].astype(float))
    t_raw = Entropy().fit({}).uncertainty(test)
    np.testing.assert_allclose(head.uncertainty(test), np.interp(t_raw, xs, fitted), atol=1e-12)


def tiny_alien_data(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, 8)).astype(np.float32)
    logits = hidden[:, :2] * 2.0
    label = (logits + rng.normal(size=logits.shape)).argmax(1)
    return {"id": np.array([f"{seed}-{i}" for i in range(n)]), "hidden": hidden, "logits": logits,
            "pred": logits.argmax(1), "label": label}


@pytest.mark.parametrize("method", ["beta", "platt", "isotonic"])
def test_a_calibrated_trained_head_saves_and_loads_with_its_base(tmp_path, method):
    torch.manual_seed(0)
    clf = Classifier(ClassifierSpec("linear", 8, 2))
    base = Alien(classifier=clf, epochs=3, patience=None)
    head = Calibrated(head=base, method=method).fit(tiny_alien_data(200, 0), tiny_alien_data(300, 1))
    assert head.requires == ("hidden",) and {"id", "pred", "label", "hidden", "logits"} == set(head.fit_requires)
    head.save(tmp_path / "alien_platt")
    doc = json.loads((tmp_path / "alien_platt" / "head.json").read_text())
    assert doc["name"] == "calibrated" and doc["state"]["head"] == "alien"
    loaded = load_head(tmp_path / "alien_platt")
    test = tiny_alien_data(100, 2)
    np.testing.assert_array_equal(loaded.uncertainty(test), head.uncertainty(test))
    assert loaded.error_probability and isinstance(loaded.head, Alien) and loaded.head.best_epoch_ == base.best_epoch_


def test_the_base_head_selects_on_the_other_share_of_val_only():
    torch.manual_seed(0)
    val = tiny_alien_data(300, 1)
    share = id_share(list(val["id"]), 0.5, seed=1, salt=SALT)
    wrapped = Calibrated(head=Alien(classifier=Classifier(ClassifierSpec("linear", 8, 2)), epochs=3, patience=None))
    wrapped.fit(tiny_alien_data(200, 0), val)
    torch.manual_seed(0)
    alone = Alien(classifier=Classifier(ClassifierSpec("linear", 8, 2)), epochs=3, patience=None)
    alone.fit(tiny_alien_data(200, 0), {k: v[~share] for k, v in val.items()})
    assert wrapped.head.history_ == alone.history_


def test_bad_calibration_inputs_are_refused_with_the_reason():
    train, val = miscalibrated(10, 0), miscalibrated(200, 1)
    with pytest.raises(ValueError, match="needs val"):
        Calibrated(head=MSP()).fit(train)
    with pytest.raises(ValueError, match="method='gamma'"):
        Calibrated(head=MSP(), method="gamma").fit(train, val)
    with pytest.raises(ValueError, match="fraction"):
        Calibrated(head=MSP(), fraction=1.0).fit(train, val)
    perfect = {**val, "label": val["pred"]}
    with pytest.raises(ValueError, match="has no errors"):
        Calibrated(head=MSP()).fit(train, perfect)


def test_a_val_carved_from_train_splits_in_two_whatever_the_seeds():
    """The carve-out (hash < 0.1) and the calibration share (hash < 0.5) hash apart even with one seed:
    otherwise every carved val row would fall in the calibration share and none would select."""
    from jobs.fit_heads import CALIBRATION_SALT

    ids = [f"train-{i}" for i in range(5000)]
    for seed in (0, 1, 2):
        val = [i for i, keep in zip(ids, id_share(ids, 0.1, seed=seed), strict=True) if keep]
        for salt in (SALT, CALIBRATION_SALT):
            share = id_share(val, 0.5, seed=seed, salt=salt)
            assert 0.4 < share.mean() < 0.6, (seed, salt, share.mean())
