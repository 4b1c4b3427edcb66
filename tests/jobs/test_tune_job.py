"""The tune stage end to end on a synthetic feature cache whose best regularisation is known."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from jobs._common import job_main
from jobs.schemas.tune import Config
from jobs.tune import run
from tests.tuning.synthetic import write_synthetic_run
from ue.artifacts import Manifest, RunLayout
from ue.config import load_config
from ue.heads import load_head

SEARCH = {
    "name": "alien_l2sp", "head": "alien",
    "params": {"alpha": 0.0, "lr": 0.2, "epochs": 3, "batch_size": 64},
    "space": {"beta": {"grid": [0.0, 10.0]}},
    "feature_runs": ["backbone2"], "max_concurrent_trials": 2,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict[str, Any]:
    """The same train/val features twice, once with a poisoned test split; the clean run is tuned
    from the command line (``python -m jobs.tune`` parses the same way), the other through ``run``."""
    root = tmp_path_factory.mktemp("runs")
    write_synthetic_run(root, "clean")
    write_synthetic_run(root, "poisoned", poison_test=True)
    write_synthetic_run(root, "backbone2", seed=1)
    config = root / "tune.yaml"
    config.write_text(json.dumps({"searches": [SEARCH]}))  # JSON is YAML
    job_main(Config, run, argv=["--config", str(config), f"run.root={root}", "run.run_id=clean"])
    run(load_config(Config, config, overrides=[f"run.root={root}", "run.run_id=poisoned"]))
    return {name: RunLayout(root, name) for name in ("clean", "poisoned")}


def _best(layout: RunLayout) -> dict[str, Any]:
    return json.loads((layout.tune_dir("alien_l2sp") / "best.json").read_text())


def test_the_search_picks_the_known_best_and_writes_every_output(runs):
    layout = runs["clean"]
    best = _best(layout)
    trials = pd.read_parquet(layout.tune_dir("alien_l2sp") / "trials.parquet")

    assert best["searched"] == {"beta": 10.0}
    assert best["params"] == {"alpha": 0.0, "lr": 0.2, "epochs": 3, "batch_size": 64, "beta": 10.0, "seed": 0}
    assert len(trials) == 4 and set(trials["replica"]) == {"clean", "backbone2"}  # 2 configs x 2 backbones
    assert best["val"]["n"] == 2 and best["runs"] == ["clean", "backbone2"]
    winners = trials.loc[trials["beta"] == 10.0, "val_roc_auc"]
    assert best["val"]["mean"] == pytest.approx(winners.mean())
    assert best["val"]["std"] == pytest.approx(winners.std(ddof=0))
    assert Manifest(layout).is_done("tune")


def test_the_refitted_head_is_the_winning_trial(runs):
    layout = runs["clean"]
    best = _best(layout)
    head = load_head(layout.head_dir("alien_l2sp"))
    trials = pd.read_parquet(layout.tune_dir("alien_l2sp") / "trials.parquet")
    winner = trials[(trials["beta"] == 10.0) & (trials["replica"] == "clean")].iloc[0]

    assert head.get_params()["beta"] == 10.0 and head.best_epoch_ == winner["best_epoch"]
    assert best["refit"]["val"]["roc_auc"] == pytest.approx(winner["val_roc_auc"], abs=1e-12)
    assert np.all(np.isfinite(head.uncertainty({"hidden": np.zeros((3, 8), np.float32)})))


def test_a_poisoned_test_split_does_not_change_the_choice(runs):
    clean, poisoned = _best(runs["clean"]), _best(runs["poisoned"])
    assert poisoned["searched"] == clean["searched"] == {"beta": 10.0}
    assert poisoned["val"] == clean["val"]
    # The poison works: on that test split the chosen head is much worse than on the clean one.
    assert poisoned["refit"]["test"]["roc_auc"] < clean["refit"]["test"]["roc_auc"] - 0.2


def test_a_rerun_of_a_done_stage_is_skipped(runs, tmp_path):
    layout = runs["clean"]
    before = (layout.tune_dir("alien_l2sp") / "best.json").stat().st_mtime_ns
    data = {"searches": [SEARCH], "run": {"root": str(layout.run_dir.parent), "run_id": "clean"}}
    run(load_config(Config, data=data))
    assert (layout.tune_dir("alien_l2sp") / "best.json").stat().st_mtime_ns == before


def test_missing_features_say_which_stage_writes_them(tmp_path, ray_local):
    write_synthetic_run(tmp_path, "r")
    for part in (tmp_path / "r" / "features" / "split=val").glob("*.parquet"):
        part.unlink()
    cfg = load_config(Config, data={"searches": [SEARCH | {"feature_runs": []}],
                                    "run": {"root": str(tmp_path), "run_id": "r"}})
    with pytest.raises(FileNotFoundError, match="run the extract stage"):
        run(cfg)

