"""Selection: mean +- std over repeats, hand-computed."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tuning import best_config, summarise


def _trials() -> pd.DataFrame:
    return pd.DataFrame({
        "beta": [0.1, 0.1, 1.0, 1.0, 0.0, 0.0],
        "lr": [1e-4] * 6,
        "seed": [0, 1, 0, 1, 0, 1],
        "val_roc_auc": [0.70, 0.80, 0.90, 0.70, 0.60, math.nan],
    })


def test_summary_is_mean_and_population_std_over_seeds_best_first():
    summary = summarise(_trials(), by=["beta", "lr"], metric="val_roc_auc", mode="max")
    assert summary["beta"].tolist() == [1.0, 0.1, 0.0]
    assert summary["mean"].tolist() == pytest.approx([0.80, 0.75, 0.60])
    assert summary["std"].tolist() == pytest.approx([0.10, 0.05, 0.0])
    assert summary["n"].tolist() == [2, 2, 2]  # a NaN repeat counts but does not enter the mean
    assert best_config(summary, ["beta", "lr"]) == {"beta": 1.0, "lr": 1e-4}
    assert isinstance(best_config(summary, ["beta"])["beta"], float)


def test_min_mode_and_ties_keep_the_first_configuration():
    trials = pd.DataFrame({"beta": [0.5, 0.1, 0.2], "aurc": [0.3, 0.1, 0.1]})
    summary = summarise(trials, by=["beta"], metric="aurc", mode="min")
    assert summary["beta"].tolist() == [0.1, 0.2, 0.5]


def test_nothing_searched_summarises_all_trials_as_one():
    summary = summarise(_trials(), by=[], metric="val_roc_auc", mode="max")
    assert len(summary) == 1 and summary.loc[0, "n"] == 6 and summary.loc[0, "mean"] == pytest.approx(0.74)


def test_missing_columns_are_named():
    with pytest.raises(KeyError, match="alpha"):
        summarise(_trials(), by=["alpha"], metric="val_roc_auc", mode="max")


def test_best_config_keeps_integer_columns_integers():
    """A row of mixed int and float columns reads back as floats; range(epochs) would then fail."""
    trials = pd.DataFrame({"epochs": [5, 10], "lr": [1e-3, 1e-4], "val_roc_auc": [0.6, 0.7]})
    best = best_config(summarise(trials, by=["epochs", "lr"], metric="val_roc_auc", mode="max"), ["epochs", "lr"])
    assert best == {"epochs": 10, "lr": 1e-4} and type(best["epochs"]) is int
