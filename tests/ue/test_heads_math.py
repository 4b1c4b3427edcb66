"""Numbers of every head against hand computations (METHODS.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax

from ue.heads import (
    MSP,
    AdUE,
    Alien,
    Classifier,
    ClassifierSpec,
    Entropy,
    Mahalanobis,
    RelativeMahalanobis,
    TemperatureScaling,
)
from ue.metrics import roc_auc


def test_msp_and_entropy_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    p0 = math.exp(2) / (math.exp(2) + 1)
    np.testing.assert_allclose(MSP().uncertainty({"logits": logits}), [1 - p0, 0.5])
    h0 = -(p0 * math.log(p0) + (1 - p0) * math.log(1 - p0)) / math.log(2)
    np.testing.assert_allclose(Entropy().uncertainty({"logits": logits}), [h0, 1.0])


def test_alien_at_init_equals_normalised_entropy(linear_classifier, splits):
    head = Alien(classifier=linear_classifier, epochs=0).fit(splits["train"])
    expected = Entropy().uncertainty(splits["test"])
    np.testing.assert_allclose(head.uncertainty(splits["test"]), expected, atol=1e-6)


@pytest.mark.parametrize("kind,activation", [("two_layer", "tanh"), ("two_layer", "gelu"), ("bert_pooler", "tanh")])
def test_alien_identity_for_encoder_heads_in_eval_mode(kind, activation):
    torch.manual_seed(1)
    clf = Classifier(ClassifierSpec(kind, hidden_size=12, num_labels=4, activation=activation, dropout=0.3))
    from tests.conftest import make_features

    feats = make_features(clf, 200, seed=5)
    head = Alien(classifier=clf, epochs=0).fit(feats)
    np.testing.assert_allclose(head.uncertainty(feats), Entropy().uncertainty(feats), atol=1e-6)


def test_adue_score_by_hand():
    clf = Classifier(ClassifierSpec("linear", hidden_size=3, num_labels=3, bias=False))
    with torch.no_grad():
        clf.out_proj.weight.copy_(torch.eye(3))
    z = np.array([[2.0, 0.5, -1.0], [0.1, 0.0, 0.05]], dtype=np.float32)
    feats = {"hidden": z, "logits": z, "label": np.array([0, 1]), "pred": np.array([0, 0])}
    head = AdUE(classifier=clf, epochs=0, smoothmax_lambda=100.0).fit(feats)
    expected = []
    for row in z.astype(np.float64):
        p = np.exp(row) / np.exp(row).sum()
        smooth = math.log(sum(math.exp(100 * q) for q in p)) / 100
        expected.append(min(max((1 - smooth) / (1 - 1 / 3), 1e-7), 1 - 1e-7))
    np.testing.assert_allclose(head.uncertainty(feats), expected, rtol=1e-5)


def test_trained_heads_beat_their_anchor_when_errors_are_learnable():
    """The labels follow a direction of hidden space the model ignores; the heads must pick it up."""
    rng = np.random.default_rng(0)
    d, c = 8, 2
    w = np.eye(c, d) * 2.0
    truth = w.copy()
    truth[:, 5] = [3.0, -3.0]
    clf = Classifier(ClassifierSpec("linear", hidden_size=d, num_labels=c, bias=False))
    with torch.no_grad():
        clf.out_proj.weight.copy_(torch.tensor(w, dtype=torch.float32))

    def draw(n):
        h = rng.normal(size=(n, d)).astype(np.float32)
        logits = (h @ w.T).astype(np.float32)
        return {"hidden": h, "logits": logits, "pred": logits.argmax(1), "label": (h @ truth.T).argmax(1)}

    train, val, test = draw(4000), draw(1000), draw(1000)
    e = (test["pred"] != test["label"]).astype(int)
    base = roc_auc(Entropy().uncertainty(test), e)
    assert base < 0.65
    for cls in (Alien, AdUE):
        head = cls(classifier=clf, lr=1e-2, epochs=5, alpha=0.0, beta=0.0).fit(train, val)
        assert roc_auc(head.uncertainty(test), e) > base + 0.15
        assert 1 <= head.best_epoch_ <= 5 and len(head.history_) == 5


def test_selection_uses_validation_only(linear_classifier, splits):
    """The kept epoch is the argmax of the recorded validation ROC-AUC; no test data is involved."""
    head = Alien(classifier=linear_classifier, epochs=6, lr=3e-2).fit(splits["train"], splits["val"])
    aucs = [h["val_roc_auc"] for h in head.history_]
    assert head.best_epoch_ == int(np.argmax(aucs)) + 1
    e = (splits["val"]["pred"] != splits["val"]["label"]).astype(int)
    assert roc_auc(head.uncertainty(splits["val"]), e) == pytest.approx(max(aucs), abs=1e-9)


def test_l2sp_pulls_towards_init(linear_classifier, splits):
    """With a huge beta the trained head stays at its initial weights (the identity holds again)."""
    init = linear_classifier.out_proj.weight.detach().clone()
    free = Alien(classifier=linear_classifier, epochs=3, lr=1e-2, beta=0.0).fit(splits["train"])
    tied = Alien(classifier=linear_classifier, epochs=3, lr=1e-2, beta=1e4).fit(splits["train"])

    def moved(head: Alien) -> float:
        return float((head.module_.out_proj.weight - init).abs().max())

    assert moved(tied) < 0.1 * moved(free)
    assert torch.equal(linear_classifier.out_proj.weight, init)  # the given module is never modified


def test_random_init_ablation_differs_from_copy(linear_classifier, splits):
    copy = Alien(classifier=linear_classifier, epochs=0).fit(splits["train"])
    rand = Alien(classifier=linear_classifier, epochs=0, init="random").fit(splits["train"])
    assert not np.allclose(copy.uncertainty(splits["test"]), rand.uncertainty(splits["test"]))


def test_trained_head_rejects_bad_params_and_shapes(linear_classifier, splits):
    with pytest.raises(ValueError, match="needs classifier"):
        Alien().fit(splits["train"])
    with pytest.raises(ValueError, match="lr=-1"):
        Alien(classifier=linear_classifier, lr=-1).fit(splits["train"])
    bad = dict(splits["train"], hidden=splits["train"]["hidden"][:, :8])
    with pytest.raises(ValueError, match=r"expects \(n, 16\)"):
        Alien(classifier=linear_classifier).fit(bad)


def test_temperature_lowers_validation_nll(linear_classifier, splits):
    val = splits["val"]
    over = {**val, "logits": val["logits"] * 3.0}  # an over-confident model

    def nll(logits, t):
        p = softmax(logits / t, axis=1)
        return -np.log(p[np.arange(len(p)), val["label"]]).mean()

    head = TemperatureScaling().fit(splits["train"], over)
    assert head.temperature_ > 1.5
    assert nll(over["logits"], head.temperature_) < nll(over["logits"], 1.0) - 0.05
    np.testing.assert_allclose(
        head.uncertainty(over), 1 - softmax(over["logits"].astype(np.float64) / head.temperature_, axis=1).max(1)
    )


def test_mahalanobis_matches_explicit_inverse():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    y = rng.integers(0, 3, 300)
    h[y == 1] += 3.0
    test = rng.normal(size=(20, 4))
    mus = np.stack([h[y == c].mean(0) for c in range(3)])
    centred = h - mus[y]
    prec = np.linalg.inv(centred.T @ centred / len(h))
    md = np.stack([np.einsum("ij,jk,ik->i", test - m, prec, test - m) for m in mus], 1)
    head = Mahalanobis().fit({"hidden": h, "label": y})
    np.testing.assert_allclose(head.uncertainty({"hidden": test}), md.min(1), rtol=1e-4)

    g = h - h.mean(0)
    md0 = np.einsum("ij,jk,ik->i", test - h.mean(0), np.linalg.inv(g.T @ g / len(h)), test - h.mean(0))
    rmd = RelativeMahalanobis().fit({"hidden": h, "label": y})
    np.testing.assert_allclose(rmd.uncertainty({"hidden": test}), md.min(1) - md0, rtol=1e-4, atol=1e-4)


def test_mahalanobis_on_singular_covariance_does_not_crash():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(10, 3))
    h = np.concatenate([base, base, np.zeros((10, 5))], axis=1)  # rank 3 in 11 dims, and d > n
    y = np.arange(10) % 2
    for head in (Mahalanobis(), Mahalanobis(shrinkage=0.1, normalize=True), RelativeMahalanobis()):
        u = head.fit({"hidden": h, "label": y}).uncertainty({"hidden": rng.normal(size=(7, 11))})
        assert u.shape == (7,) and np.isfinite(u).all()
