"""Packed search: grids enumerated and cut into packs, halving inside a pack, and a packed Tune search
that gives one row per configuration and chooses what the unpacked search chooses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from jobs.tune import load_feature_set
from tests.tuning.synthetic import write_synthetic_run
from tuning import FeatureSet, SearchSpace, best_config, head_trainable, run_search, summarise
from tuning.packing import SuccessiveHalving, cut_packs, expand_configs
from tuning.search import run_packed_search
from tuning.space import load_preset

COLUMNS = ("hidden", "logits", "label", "pred")
FIXED = {"alpha": 0.0, "lr": 0.2, "epochs": 3, "batch_size": 64}


def test_the_paper_grids_expand_to_every_configuration_once():
    alien = expand_configs(load_preset("alien_paper"), "grid", seeds=[0, 1])
    assert len(alien) == 54 and len({tuple(sorted(c.items())) for c in alien}) == 54
    assert {c["epochs"] for c in alien} == {20} and {c["seed"] for c in alien} == {0, 1}
    adue = expand_configs(load_preset("adue_paper"), "grid", seeds=[0], replicas=["a", "b"])
    assert len(adue) == 288 and {c["replica"] for c in adue} == {"a", "b"}


def test_random_draws_are_seeded_and_held_constant_across_seeds():
    space = SearchSpace(head="alien", space={"beta": {"loguniform": [1e-3, 10.0]}, "lr": {"choice": [0.1, 0.2]}})
    draws = expand_configs(space, "random", seeds=[0, 1], num_samples=4, search_seed=7)
    assert [c["beta"] for c in draws[:4]] == [c["beta"] for c in draws[4:]]
    assert all(1e-3 <= c["beta"] <= 10.0 and c["lr"] in (0.1, 0.2) for c in draws)
    assert draws == expand_configs(space, "random", seeds=[0, 1], num_samples=4, search_seed=7)


def test_packs_balance_epochs_and_keep_replicas_apart():
    adue = expand_configs(load_preset("adue_paper"), "grid", seeds=[0])
    packs = cut_packs(adue, packs=2, default_epochs=10)
    assert [len(p) for p in packs] == [72, 72]
    assert [sum(c["epochs"] for c in p) for p in packs] == [840, 840]  # 144 configs of 5, 10, 20 epochs
    assert sorted(tuple(sorted(c.items())) for p in packs for c in p) == sorted(tuple(sorted(c.items())) for c in adue)
    both = expand_configs(load_preset("alien_paper"), "grid", seeds=[0], replicas=["a", "b"])
    packs = cut_packs(both, packs=4, default_epochs=50)
    assert len(packs) == 4 and all(len({c["replica"] for c in p}) == 1 for p in packs)
    with pytest.raises(ValueError, match="packs must be >= 1"):
        cut_packs(both, packs=0, default_epochs=50)


def test_successive_halving_keeps_ashas_share_at_ashas_rungs():
    halving = SuccessiveHalving(max_t=20, grace_period=2, reduction_factor=3)
    assert halving.rungs == [2, 6, 18]  # Ray Tune's ASHA milestones for these settings
    best = {k: float(k) for k in range(9)}
    epochs = dict.fromkeys(range(9), 20)
    # np.nanpercentile(0..8, 66.7) = 5.33: 6, 7, 8 go on.
    assert halving.stop(2, best, epochs) == [0, 1, 2, 3, 4, 5]
    assert halving.stop(3, best, epochs) == []  # not a rung
    epochs[0] = 2  # a config that ends at this epoch anyway is not stopped
    best[1] = np.nan  # nor one without a finite value yet (ASHA lets it go on)
    assert halving.stop(2, best, epochs) == [2, 3, 4, 5]


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FeatureSet]:
    layout = write_synthetic_run(tmp_path_factory.mktemp("runs"), "r0")
    return {"r0": load_feature_set(layout, COLUMNS)}


def _space(**domains: Any) -> SearchSpace:
    return SearchSpace(head="alien", params={k: v for k, v in FIXED.items() if k not in domains}, space=domains)


@pytest.mark.usefixtures("ray_local")
def test_a_packed_search_gives_one_row_per_config_and_the_unpacked_choice(features, tmp_path):
    space = _space(beta={"grid": [0.0, 0.1, 10.0]}, lr={"grid": [0.2, 0.05]})
    configs = expand_configs(space, "grid", seeds=[0, 1])
    packed = run_packed_search("alien", features, cut_packs(configs, packs=2, default_epochs=50),
                               storage_path=tmp_path / "packed", max_concurrent_trials=2)
    plain = run_search(head_trainable("alien", features), param_space=space.param_space("grid", seeds=[0, 1]),
                       metric="val_roc_auc", mode="max", storage_path=tmp_path / "plain", max_concurrent_trials=2)

    assert len(packed) == 12 and packed["trial_id"].is_unique and not packed["early_stopped"].any()
    assert set(plain.columns) <= set(packed.columns)
    assert (packed["iterations"] == 3).all()
    key = ["beta", "lr", "seed"]
    both = packed.merge(plain, on=key, suffixes=("", "_plain"))
    assert len(both) == 12
    np.testing.assert_allclose(both["val_roc_auc"], both["val_roc_auc_plain"], rtol=0, atol=1e-4)
    assert (both["best_epoch"] == both["best_epoch_plain"]).all()
    choice = [best_config(summarise(t, by=["beta", "lr"], metric="val_roc_auc", mode="max"), ["beta", "lr"])
              for t in (packed, plain)]
    assert choice[0] == choice[1] and choice[0]["beta"] == 10.0


@pytest.mark.usefixtures("ray_local")
def test_asha_in_a_pack_stops_the_weak_configs_and_keeps_the_best(features, tmp_path):
    space = _space(beta={"grid": [10.0, 0.0, 0.0001, 0.001]}, epochs={"grid": [6]})
    configs = expand_configs(space, "grid", seeds=[0])
    trials = run_packed_search("alien", features, cut_packs(configs, packs=1, default_epochs=50),
                               storage_path=tmp_path, scheduler="asha", max_t=6, grace_period=1, reduction_factor=2)
    assert len(trials) == 4 and trials["early_stopped"].any()
    assert (trials.loc[trials["early_stopped"], "iterations"] < 6).all()
    assert (trials.loc[~trials["early_stopped"], "iterations"] == 6).all()
    summary = summarise(trials, by=["beta"], metric="val_roc_auc", mode="max")
    assert best_config(summary, ["beta"]) == {"beta": 10.0}
