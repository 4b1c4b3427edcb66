"""Tune driving the fine-tuning job on a tiny random BERT, on CPU: two UAL smoothing ranges, and two
UA-CLM weights of the mixed objective (CE + beta * UA-CLM)."""

from __future__ import annotations

import functools
import json
import operator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from jobs.schemas.tune import Config
from jobs.tune import run
from tests.tiny import save_tiny_model
from tests.tuning.synthetic import start_ray
from ue.artifacts import RunLayout
from ue.config import load_config

WORDS = {1: ["good", "great", "fine", "superb"], 0: ["bad", "awful", "poor", "dull"]}


def _write_data(folder: Path) -> None:
    folder.mkdir(parents=True)
    for split, n in (("train", 48), ("validation", 16)):
        with (folder / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                label = i % 2
                text = f"a {WORDS[label][i % 4]} film number {i}"
                f.write(json.dumps({"text": text, "label": label, "uncertainty": (i % 5) / 4}) + "\n")


def _finetune_yaml(tmp: Path, loss: dict[str, Any]) -> Path:
    model = save_tiny_model(tmp / "model", "bert", "sequence_classification")
    _write_data(tmp / "data")
    config = {
        "data": {"name": str(tmp / "data"), "task": "sequence_classification", "max_length": 16},
        "model": {"name_or_path": str(model), "task": "sequence_classification", "num_labels": 2},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        "train": {**loss, "epochs": 1, "batch_size": 16, "lr": 1e-3, "select_metric": "val_loss", "max_failures": 0},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
    }
    path = tmp / "finetune.yaml"
    path.write_text(json.dumps(config))
    return path


SEARCHES = {  # name: (the loss settings of the YAML, the searched key, its grid)
    "ual_eps": ({"loss": "ual", "loss_params": {"eps_min": 0.0, "eps_max": 0.1}}, "train.loss_params.eps_max",
                [0.0, 0.3]),
    "ua_clm_beta": ({"loss": "ua_clm", "mix_ce": True, "beta_early": 0.2}, "train.beta_late", [0.0, 0.8]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SEARCHES)
def test_tune_drives_two_finetuning_runs_and_picks_by_validation(tmp_path, name):
    import ray

    loss, key, grid = SEARCHES[name]
    search = {"name": name, "config": str(_finetune_yaml(tmp_path, loss)), "space": {key: {"grid": grid}}}
    cfg = load_config(Config, data={"finetune": [search], "run": {"root": str(tmp_path / "runs"), "run_id": "r"}})
    start_ray()
    try:
        run(cfg)
    finally:
        ray.shutdown()

    tune_dir = RunLayout(tmp_path / "runs", "r").tune_dir(name)
    trials = pd.read_parquet(tune_dir / "trials.parquet")
    best = json.loads((tune_dir / "best.json").read_text())
    assert sorted(trials[key]) == grid and trials["val_loss"].notna().all()
    winner = trials.loc[trials["val_loss"].idxmin()]
    assert best["searched"] == {key: winner[key]}
    assert best["metric"] == "val_loss" and best["val"]["mean"] == pytest.approx(winner["val_loss"])
    for run_dir in best["run_dirs"]:
        saved = json.loads((Path(run_dir) / "manifest.json").read_text())["stages"]["finetune"]
        assert saved["status"] == "done" and (Path(run_dir) / "finetune" / "adapter").is_dir()
        trained = yaml.safe_load((Path(run_dir) / "finetune" / "config.yaml").read_text())
        assert trained["train"]["loss"] == loss["loss"]
        assert functools.reduce(operator.getitem, key.split("."), trained) == winner[key]
