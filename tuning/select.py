"""Turning trial results into a choice: per-configuration mean +- std over repeats, best first.

Pandas only. Repeats are the trials that share every searched value and differ in ``seed`` (head
seeds) or ``replica`` (backbone fine-tunes); std is NumPy's (ddof = 0), so a single repeat has 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pandas as pd


def summarise(
    trials: pd.DataFrame, *, by: Sequence[str], metric: str, mode: Literal["max", "min"]
) -> pd.DataFrame:
    """One row per configuration (the ``by`` columns): ``mean``, ``std`` and ``n`` of ``metric`` over
    its repeats, sorted best first; ties keep the order in which the configurations first appear.

    Trials whose metric is NaN (e.g. no validation error to detect) count in ``n`` but not in the mean.
    """
    if trials.empty:
        raise ValueError("no trials to summarise")
    missing = [c for c in (*by, metric) if c not in trials.columns]
    if missing:
        raise KeyError(f"trials have no column(s) {', '.join(missing)}; columns: {', '.join(trials.columns)}")
    keys = list(by) or ["_all"]
    frame = trials.assign(_all=0) if not by else trials
    grouped = frame.groupby(keys, sort=False, dropna=False)[metric]
    table = grouped.agg(mean="mean", std=lambda s: s.std(ddof=0), n="size").reset_index()
    table = table.drop(columns=["_all"], errors="ignore")
    return table.sort_values("mean", ascending=mode == "min", kind="stable", na_position="last").reset_index(
        drop=True
    )


def best_config(summary: pd.DataFrame, by: Sequence[str]) -> dict[str, Any]:
    """The winning configuration of :func:`summarise`'s table as plain Python values.

    Read column by column: a row of mixed int and float columns (``epochs`` next to ``lr``) would
    come back as floats, and ``range(epochs)`` then fails.
    """
    return {k: _plain(summary[k].iloc[0]) for k in by}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
