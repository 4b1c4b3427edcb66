"""Search spaces from YAML: presets equal METHODS.md's grids, domains check themselves, overrides merge."""

from __future__ import annotations

import sys

import pytest
from ray import tune

from tuning import count_trials
from tuning.space import Domain, SearchSpace, load_preset, load_space, preset_names
from ue.config import ConfigError

ALIEN = {"alpha": [0.01, 0.1, 1.0], "beta": [0.01, 0.1, 1.0], "lr": [4e-4, 1e-4, 1e-5]}
ADUE = {"lr": [1e-3, 1e-4, 1e-5], "epochs": [5, 10, 20], "alpha": [0.0, 0.1, 0.3, 1.0], "beta": [0.01, 0.1, 0.5, 1.0]}


def _grids(space: SearchSpace) -> dict[str, list]:
    return {k: d.grid for k, d in space.space.items()}


def test_paper_presets_reproduce_the_methods_grids():
    alien, adue = load_preset("alien_paper"), load_preset("adue_paper")
    assert alien.head == "alien" and _grids(alien) == ALIEN and alien.params["epochs"] == 20
    assert alien.num_configs("grid") == 27
    assert adue.head == "adue" and _grids(adue) == ADUE and adue.num_configs("grid") == 144


@pytest.mark.parametrize(
    ("name", "fixed", "searched"),
    [
        ("ablation_bce", {"alpha": 0.0, "beta": 0.0}, ["lr"]),
        ("ablation_bce_l2sp", {"alpha": 0.0}, ["beta", "lr"]),
        ("ablation_bce_reg", {"beta": 0.0}, ["alpha", "lr"]),
        ("ablation_random_init", {"init": "random"}, ["alpha", "beta", "lr"]),
    ],
)
def test_ablation_presets_switch_off_what_they_ablate(name, fixed, searched):
    space = load_preset(name)
    assert fixed.items() <= space.params.items() and sorted(space.space) == searched
    assert all(_grids(space)[k] == ALIEN[k] for k in searched)


def test_every_preset_loads_and_unknown_names_suggest_the_closest():
    assert len(preset_names()) == 6
    for name in preset_names():
        load_preset(name).check("grid")
    with pytest.raises(ValueError, match="Did you mean 'alien_paper'"):
        load_preset("alien_papr")


def test_overrides_fix_or_search_a_preset_parameter():
    space = load_preset("alien_paper").override(
        head="adue", params={"lr": 1e-4}, space={"epochs": {"grid": [5, 10]}}
    )
    assert space.head == "adue" and space.params["lr"] == 1e-4 and "lr" not in space.space
    assert space.space["epochs"].grid == [5, 10] and "epochs" not in space.params
    assert space.num_configs("grid") == 3 * 3 * 2


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ({}, "exactly one of grid, choice, uniform, loguniform"),
        ({"grid": [1], "choice": [2]}, "exactly one"),
        ({"grid": []}, "at least one value"),
        ({"uniform": [1.0, 0.5]}, "low < high"),
        ({"loguniform": [0.0, 1.0]}, "low must be > 0"),
        ({"gird": [1]}, "Extra inputs"),
    ],
)
def test_bad_domains_say_what_to_write(domain, message):
    with pytest.raises(ValueError, match=message):
        Domain.model_validate(domain)


def test_a_space_rejects_overlaps_and_reserved_parameters():
    with pytest.raises(ValueError, match="both fixed"):
        SearchSpace(head="alien", params={"lr": 1e-4}, space={"lr": {"grid": [1e-3]}})
    with pytest.raises(ValueError, match="`seeds` list"):
        SearchSpace(head="alien", space={"seed": {"grid": [0, 1]}})


def test_grid_search_refuses_sampled_domains():
    space = SearchSpace(head="alien", space={"lr": {"loguniform": [1e-5, 1e-3]}})
    with pytest.raises(ValueError, match="set algorithm: random"):
        space.param_space("grid", seeds=[0])
    assert space.num_configs("random", num_samples=8) == 8


def test_param_space_grids_seeds_and_replicas():
    space = SearchSpace(head="alien", params={"epochs": 3},
                        space={"beta": {"grid": [0.0, 1.0]}, "lr": {"loguniform": [1e-5, 1e-3]}})
    grid = SearchSpace(head="alien", params={"epochs": 3}, space={"beta": {"grid": [0.0, 1.0]}})
    assert grid.param_space("grid", seeds=[0, 1], replicas=["a", "b", "c"]) == {
        "epochs": 3, "beta": tune.grid_search([0.0, 1.0]), "seed": tune.grid_search([0, 1]),
        "replica": tune.grid_search(["a", "b", "c"]),
    }
    assert count_trials(grid.param_space("grid", seeds=[0, 1], replicas=["a", "b", "c"])) == 12
    drawn = space.param_space("random", seeds=[0, 1])
    assert isinstance(drawn["beta"], tune.search.sample.Categorical)  # a grid is drawn from in random search
    assert isinstance(drawn["lr"], tune.search.sample.Float)
    assert count_trials(drawn, num_samples=5) == 10


def test_spaces_load_from_yaml_with_errors_naming_the_key(tmp_path):
    good = tmp_path / "space.yaml"
    good.write_text("head: alien\nparams: {epochs: 5}\nspace:\n  lr: {loguniform: [1e-5, 1e-3]}\n")
    assert load_space(good).space["lr"].loguniform == (1e-5, 1e-3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("head: alien\nspace:\n  lr: {uniform: [2, 1]}\n")
    with pytest.raises(ConfigError, match="space.lr"):
        load_space(bad)


def test_importing_the_space_module_loads_neither_ray_nor_torch():
    import subprocess

    code = "import sys, tuning, tuning.space; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'ray'" not in loaded and "'torch'" not in loaded
