"""run_search with the head trainable on a local 2-CPU Ray: selection, ASHA, random search, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any, ClassVar

import pytest
from ray import tune

from jobs.tune import load_feature_set
from tests.tuning.synthetic import write_synthetic_run
from tuning import FeatureSet, SearchInterrupted, SearchSpace, best_config, head_trainable, run_search, summarise

COLUMNS = ("hidden", "logits", "label", "pred")
FIXED = {"alpha": 0.0, "lr": 0.2, "epochs": 3, "batch_size": 64}
pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FeatureSet]:
    layout = write_synthetic_run(tmp_path_factory.mktemp("runs"), "r0")
    return {"r0": load_feature_set(layout, COLUMNS)}


def _space(**domains: Any) -> SearchSpace:
    params = {k: v for k, v in FIXED.items() if k not in domains}
    return SearchSpace(head="alien", params=params, space=domains)


def _search(features: dict[str, FeatureSet], tmp: Path, space: SearchSpace, **kwargs: Any) -> Any:
    algorithm = kwargs.pop("algorithm", "grid")
    seeds = kwargs.pop("seeds", [0])
    kwargs.setdefault("max_concurrent_trials", 2)
    return run_search(
        head_trainable("alien", features), param_space=space.param_space(algorithm, seeds=seeds),
        metric="val_roc_auc", mode="max", storage_path=tmp, **kwargs,
    )


class _BufferProbe(tune.Callback):
    """What the driver's environment says about result buffering while the trials report."""

    def __init__(self) -> None:
        self.seen: set[str | None] = set()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.seen.add(os.environ.get("TUNE_RESULT_BUFFER_LENGTH"))


def test_grid_search_picks_the_regularisation_known_to_be_best(features, tmp_path):
    space = _space(beta={"grid": [0.0, 0.1, 10.0]})
    probe = _BufferProbe()
    trials = _search(features, tmp_path, space, seeds=[0, 1], callbacks=[probe])

    assert len(trials) == 6 and set(trials["seed"]) == {0, 1}
    assert (trials["iterations"] == 3).all() and not trials["early_stopped"].any()  # one report per epoch
    # FIFO buffers the reports, yet every epoch's report reaches the trial's result.json (and only that
    # logger writes); the setting is Tune's for the search only.
    assert probe.seen == {"1000"} and "TUNE_RESULT_BUFFER_LENGTH" not in os.environ
    trial_dirs = [d for d in (tmp_path / "experiment").iterdir() if d.is_dir()]
    assert len(trial_dirs) == 6
    for trial_dir in trial_dirs:
        reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        assert [r["training_iteration"] for r in reports] == [1, 2, 3]
        assert all("val_roc_auc" in r for r in reports)
        assert not list(trial_dir.glob("progress.csv")) and not list(trial_dir.glob("events.out.tfevents*"))
    assert {"val_roc_auc", "val_aurc", "val_prr", "best_epoch", "train_loss"} <= set(trials.columns)
    summary = summarise(trials, by=["beta"], metric="val_roc_auc", mode="max")
    assert best_config(summary, ["beta"]) == {"beta": 10.0}
    assert list(summary["n"]) == [2, 2, 2]
    top = trials[trials["beta"] == 10.0]["val_roc_auc"]
    assert summary.loc[0, "mean"] == pytest.approx(top.mean())
    assert summary.loc[0, "std"] == pytest.approx(top.std(ddof=0))
    assert summary["mean"].is_monotonic_decreasing and summary["beta"].tolist() == [10.0, 0.1, 0.0]


def test_trials_never_reread_the_feature_files_and_another_search_starts_over(tmp_path):
    """The features are in the object store: the cache on disk can vanish once the trainable exists.
    A different search (fingerprint) in the same folder discards the saved experiment."""
    layout = write_synthetic_run(tmp_path / "runs", "gone")
    trainable = head_trainable("alien", {"gone": load_feature_set(layout, COLUMNS)})
    shutil.rmtree(layout.run_dir)
    for fingerprint, betas in (("a", [0.0, 10.0]), ("b", [0.1])):
        space = _space(beta={"grid": betas})
        trials = run_search(trainable, param_space=space.param_space("grid", seeds=[0]), metric="val_roc_auc",
                            mode="max", storage_path=tmp_path / "tune", fingerprint=fingerprint)
        assert trials["beta"].tolist() == betas and trials["val_roc_auc"].notna().all()


def test_asha_stops_bad_trials_early_and_keeps_the_best(features, tmp_path):
    space = _space(beta={"grid": [10.0, 0.0, 0.0001, 0.001]}, epochs={"grid": [6]})
    probe = _BufferProbe()
    trials = _search(features, tmp_path, space, scheduler="asha", max_t=6, grace_period=1, reduction_factor=2,
                     max_concurrent_trials=1, callbacks=[probe])
    assert probe.seen == {None}  # ASHA decides on every report as it comes: unbuffered
    assert trials["early_stopped"].any()
    assert (trials.loc[trials["early_stopped"], "iterations"] < 6).all()
    summary = summarise(trials, by=["beta"], metric="val_roc_auc", mode="max")
    assert best_config(summary, ["beta"]) == {"beta": 10.0}


def test_random_search_holds_each_draw_constant_across_seeds(features, tmp_path):
    space = _space(beta={"loguniform": [1e-3, 10.0]}, lr={"choice": [0.1, 0.2]})
    trials = _search(features, tmp_path, space, algorithm="random", num_samples=3, seeds=[0, 1], search_seed=7)
    assert len(trials) == 6
    summary = summarise(trials, by=["beta", "lr"], metric="val_roc_auc", mode="max")
    assert len(summary) == 3 and (summary["n"] == 2).all()
    assert ((summary["beta"] >= 1e-3) & (summary["beta"] <= 10.0)).all()


class _Recorder(tune.Callback):
    """Records trial starts/completions (class-level: Tune restores its own pickled copy on resume)
    and sends SIGUSR1, Tune's "stop and save" signal, once ``interrupt_after`` trials completed."""

    started: ClassVar[list[str]] = []
    completed: ClassVar[list[str]] = []
    interrupted: ClassVar[bool] = False

    def __init__(self, interrupt_after: int) -> None:
        self.interrupt_after = interrupt_after

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        type(self).started.append(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        type(self).completed.append(trial.trial_id)
        if len(type(self).completed) >= self.interrupt_after and not type(self).interrupted:
            type(self).interrupted = True
            os.kill(os.getpid(), signal.SIGUSR1)


def test_an_interrupted_search_resumes_without_rerunning_finished_trials(features, tmp_path):
    space = _space(beta={"grid": [0.0, 0.01, 0.1, 1.0, 10.0]}, lr={"grid": [0.2]})
    recorder = _Recorder(interrupt_after=2)
    kwargs = {"max_concurrent_trials": 1, "fingerprint": "same", "callbacks": [recorder]}

    with pytest.raises(SearchInterrupted, match="run the same command again"):
        _search(features, tmp_path, space, **kwargs)
    finished_before = list(_Recorder.completed)
    assert 2 <= len(finished_before) < 5
    _Recorder.started.clear()

    trials = _search(features, tmp_path, space, **kwargs)
    assert len(trials) == 5 and trials["val_roc_auc"].notna().all()
    assert set(_Recorder.started).isdisjoint(finished_before)
    assert set(_Recorder.started) | set(finished_before) == set(trials["trial_id"])
    summary = summarise(trials, by=["beta"], metric="val_roc_auc", mode="max")
    assert best_config(summary, ["beta"]) == {"beta": 10.0}

