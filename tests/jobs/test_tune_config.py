"""The tune stage's config: shipped YAMLs validate, mistakes name the key and the fix, imports stay light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs.schemas import config_class
from jobs.schemas.tune import Config
from ue.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "jobs" / "configs" / "tune").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(Config, path)
    for search in cfg.searches:
        search.resolved().check(search.algorithm)


def test_shipped_configs_cover_both_paper_grids():
    assert {p.stem for p in SHIPPED} >= {"alien_paper", "adue_paper", "ablations"}
    assert config_class("tune") is Config
    alien = load_config(Config, ROOT / "jobs/configs/tune/alien_paper.yaml").searches[0]
    assert alien.resolved().num_configs(alien.algorithm) == 27


def _errors(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(Config, data={"searches": [{"name": "s", **data}]})
    return str(info.value)


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ({"preset": "alien_papr"}, "Did you mean 'alien_paper'"),
        ({}, "give a preset"),
        ({"preset": "alien_paper", "num_samples": 5}, "num_samples is for algorithm: random"),
        ({"preset": "alien_paper", "space": {"lr": {"uniform": [1e-5, 1e-3]}}}, "set algorithm: random"),
        ({"preset": "alien_paper", "scheduler": "hyperband"}, "allowed: fifo, asha"),
        ({"preset": "alien_paper", "seeds": [0, 0]}, "distinct non-negative seeds"),
        ({"preset": "alien_paper", "reduction_factor": 1}, "must be >= 2"),
        ({"preset": "alien_paper", "cpus_per_trial": 0}, "must be > 0"),
        ({"preset": "alien_paper", "params": {"seed": 3}}, "`seeds` list"),
        ({"preset": "alien_paper", "custom_resources": {"CPU": 1}}, "set CPUs with cpus_per_trial"),
    ],
)
def test_config_mistakes_name_the_key_and_the_fix(search, expected):
    assert expected in _errors(search)


def test_searches_need_distinct_names_and_there_must_be_one():
    with pytest.raises(ConfigError, match="used twice"):
        load_config(Config, data={"searches": [{"name": "a", "preset": "alien_paper"}] * 2})
    with pytest.raises(ConfigError, match="at least one search"):
        load_config(Config, data={})


def test_finetune_search_keys_are_checked_against_the_finetune_config():
    finetune = str(ROOT / "jobs/configs/finetune/minilm_sst2.yaml")
    good = {"name": "ual", "config": finetune, "overrides": ["train.loss=ual"],
            "space": {"train.loss_params.eps_max": {"grid": [0.1, 0.2]}}}
    cfg = load_config(Config, data={"finetune": [good]})
    trial = cfg.finetune[0].trial_config({"train.loss_params.eps_max": 0.2}, root="/tmp/x", run_id="t0")
    assert trial.train.loss == "ual" and trial.train.loss_params == {"eps_max": 0.2} and trial.run.run_id == "t0"
    with pytest.raises(ConfigError, match="did you mean 'loss'"):
        load_config(Config, data={"finetune": [good | {"space": {"train.los": {"grid": [1]}}}]})
    with pytest.raises(ConfigError, match="set by the tune stage"):
        load_config(Config, data={"finetune": [good | {"space": {"run.run_id": {"grid": ["a"]}}}]})


def test_the_schema_imports_neither_ray_nor_torch():
    code = "import sys, jobs.schemas.tune; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "'ray'" not in loaded and "'torch'" not in loaded
