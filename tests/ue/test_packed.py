"""Packed fitting (ue.heads._packed): K configurations trained together end as K separate fits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.conftest import make_features
from ue.features import error_indicator
from ue.heads import build_head, fit_packed, pack_key
from ue.heads._math import normalised_entropy, normalised_entropy_np
from ue.heads._packed import PackedConfig, train_error_heads
from ue.heads._training import train_error_head
from ue.heads.modules import Classifier, ClassifierSpec

# One pack, every per-config setting different somewhere: lr, alpha, beta (0 included), epochs,
# seeds (three seed groups: own batches and dropout masks), patience, and a random init.
CONFIGS = [
    {"alpha": 0.1, "beta": 0.1, "lr": 1e-2, "epochs": 6, "seed": 0, "patience": None},
    {"alpha": 1.0, "beta": 0.01, "lr": 3e-3, "epochs": 4, "seed": 0, "patience": 1},
    {"alpha": 0.0, "beta": 0.0, "lr": 3e-2, "epochs": 7, "seed": 1, "patience": 2},
    {"alpha": 0.3, "beta": 1.0, "lr": 1e-3, "epochs": 3, "seed": 2, "patience": None},
    {"alpha": 0.1, "beta": 0.5, "lr": 1e-2, "epochs": 5, "seed": 1, "patience": None, "init": "random"},
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny fits: a 2-thread OpenMP pool on shared cores costs 10x more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["linear", "two_layer", "bert_pooler"])
def data(request):
    torch.manual_seed(3)
    clf = Classifier(ClassifierSpec(request.param, 16, 3, dropout=0.1))
    with torch.no_grad():
        for p in clf.parameters():
            p.mul_(3.0)  # confident enough that errors and successes both occur
    return clf, make_features(clf, 700, seed=1), make_features(clf, 300, seed=2)


@pytest.mark.parametrize("head", ["alien", "adue"])
def test_a_pack_ends_as_the_separate_fits(head, data):
    clf, train, val = data
    separate = [build_head(head, classifier=clf, batch_size=64, **c).fit(train, val) for c in CONFIGS]
    packed = fit_packed([build_head(head, classifier=clf, batch_size=64, **c) for c in CONFIGS], train, val)

    stopped = 0
    for one, pack in zip(separate, packed, strict=True):
        assert pack.best_epoch_ == one.best_epoch_
        assert len(pack.history_) == len(one.history_)
        for mine, ref in zip(pack.history_, one.history_, strict=True):
            assert mine["val_roc_auc"] == pytest.approx(ref["val_roc_auc"], abs=1e-6)
            assert mine["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-5)
        for name, value in one.module_.state_dict().items():
            torch.testing.assert_close(pack.module_.state_dict()[name], value, rtol=0, atol=1e-5)
        np.testing.assert_allclose(pack.uncertainty(val), one.uncertainty(val), rtol=0, atol=1e-5)
        stopped += len(one.history_) < one.epochs
    assert stopped >= 1  # patience really cut some fit short


def test_on_epoch_stops_configs_and_a_stopped_one_keeps_its_best_epoch_so_far():
    torch.manual_seed(0)
    clf = Classifier(ClassifierSpec("linear", 16, 3))
    with torch.no_grad():
        clf.out_proj.weight.mul_(4.0)
    train, val = make_features(clf, 500, seed=1), make_features(clf, 200, seed=2)

    configs = [PackedConfig(alpha=0.1, beta=0.1, lr=lr, epochs=6, seed=0) for lr in (1e-2, 3e-2, 1e-3)]
    kwargs = {"score_fn": normalised_entropy, "hidden": train["hidden"], "errors": error_indicator(train),
              "anchor": normalised_entropy_np(train["logits"]), "val_hidden": val["hidden"],
              "val_errors": error_indicator(val), "batch_size": 64}
    seen = []

    def drop_the_middle_one_at_epoch_2(epoch, metrics):
        seen.append((epoch, sorted(metrics)))
        return [1] if epoch == 2 else []

    results = train_error_heads([copy.deepcopy(clf) for _ in configs], configs, **kwargs,
                                on_epoch=drop_the_middle_one_at_epoch_2)
    assert seen == [(1, [0, 1, 2]), (2, [0, 1, 2])] + [(t, [0, 2]) for t in range(3, 7)]
    full = train_error_head(copy.deepcopy(clf), alpha=0.1, beta=0.1, lr=3e-2, epochs=6, seed=0, **kwargs)
    assert [h["val_roc_auc"] for h in results[1].history] == pytest.approx(
        [h["val_roc_auc"] for h in full.history[:2]], abs=1e-6)
    aucs = [h["val_roc_auc"] for h in results[1].history]
    assert results[1].best_epoch == 1 + int(np.argmax(aucs))
    assert [len(r.history) for r in results] == [6, 2, 6]


def test_zero_epochs_keeps_the_initial_module_and_the_others_train(splits, linear_classifier):
    heads = [build_head("alien", classifier=linear_classifier, epochs=e, patience=None) for e in (0, 2)]
    fit_packed(heads, splits["train"], splits["val"])
    torch.testing.assert_close(heads[0].module_.out_proj.weight, linear_classifier.out_proj.weight)
    assert heads[0].best_epoch_ == 0 and len(heads[1].history_) == 2


def test_heads_that_cannot_share_a_pack_are_refused(linear_classifier, splits):
    alien = build_head("alien", classifier=linear_classifier)
    adue = build_head("adue", classifier=linear_classifier)
    other_batch = build_head("alien", classifier=linear_classifier, batch_size=32)
    assert pack_key(alien) == pack_key(build_head("alien", classifier=linear_classifier, lr=1e-3, seed=4))
    assert pack_key(build_head("msp")) is None
    for heads in ([alien, adue], [alien, other_batch], []):
        with pytest.raises(ValueError, match="pack"):
            fit_packed(heads, splits["train"], splits["val"])
