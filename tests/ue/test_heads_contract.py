"""One contract battery over every registered head (DESIGN.md, "Heads")."""

from __future__ import annotations

import numpy as np
import pytest

from ue.heads import HEADS, NotFittedError, UncertaintyHead, build_head, load_head


def make(name: str, classifier, **extra) -> UncertaintyHead:
    params = {"classifier": classifier, "epochs": 3} if "classifier" in HEADS.get(name)._param_names() else {}
    return build_head(name, **{**params, **extra})


@pytest.mark.parametrize("name", HEADS.names())
def test_fit_returns_self_and_scores_have_shape_n(name, linear_classifier, splits):
    head = make(name, linear_classifier)
    assert head.fit(splits["train"], splits["val"]) is head
    u = head.uncertainty(splits["test"])
    assert u.shape == (300,) and u.dtype == np.float64 and np.isfinite(u).all()
    assert u.std() > 0


@pytest.mark.parametrize("name", HEADS.names())
def test_scoring_reads_only_required_columns(name, linear_classifier, splits):
    head = make(name, linear_classifier).fit(splits["train"], splits["val"])
    only = {c: splits["test"][c] for c in head.requires}
    np.testing.assert_array_equal(head.uncertainty(only), head.uncertainty(splits["test"]))


@pytest.mark.parametrize("name", HEADS.names())
def test_save_load_round_trip_gives_identical_scores(name, linear_classifier, splits, tmp_path):
    head = make(name, linear_classifier).fit(splits["train"], splits["val"])
    head.save(tmp_path / name)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["head.json", "head.safetensors"]
    loaded = load_head(tmp_path / name)
    assert type(loaded) is type(head)
    np.testing.assert_array_equal(loaded.uncertainty(splits["test"]), head.uncertainty(splits["test"]))


@pytest.mark.parametrize("name", HEADS.names())
def test_same_seed_gives_same_scores(name, linear_classifier, splits):
    a = make(name, linear_classifier).fit(splits["train"], splits["val"]).uncertainty(splits["test"])
    b = make(name, linear_classifier).fit(splits["train"], splits["val"]).uncertainty(splits["test"])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", HEADS.names())
def test_init_stores_params_only(name, linear_classifier):
    head = make(name, linear_classifier)
    assert not [k for k in vars(head) if k.endswith("_")]
    assert set(head.get_params()) == set(HEADS.get(name)._param_names())


@pytest.mark.parametrize("name", [n for n in HEADS.names() if HEADS.get(n).fit_requires])
def test_unfitted_head_refuses_to_score(name, linear_classifier, splits):
    with pytest.raises(NotFittedError, match="not fitted"):
        make(name, linear_classifier).uncertainty(splits["test"])


@pytest.mark.parametrize("name", HEADS.names())
def test_missing_column_names_the_column(name, linear_classifier, splits):
    head = make(name, linear_classifier).fit(splits["train"], splits["val"])
    missing = {k: v for k, v in splits["test"].items() if k != head.requires[0]}
    with pytest.raises(KeyError, match=f"needs column '{head.requires[0]}'"):
        head.uncertainty(missing)


def test_registry_rejects_unknown_and_duplicate_names():
    with pytest.raises(KeyError, match="Did you mean 'alien'"):
        HEADS.get("alein")
    with pytest.raises(ValueError, match="already registered"):
        HEADS.register("msp")(object)
    with pytest.raises(TypeError, match="no parameter"):
        build_head("alien", alhpa=0.1)
