"""Argument checks shared by the metrics and ``ue.selective``.

Each check returns a float64 (or int64) NumPy array and raises ``ValueError`` whose message starts
with the argument's name, so a caller several frames up can tell which input was wrong.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

ROW_SUM_ATOL = 1e-3
"""How far a probability row may sum from 1: float16/float32 softmax outputs drift by ~1e-4."""


def _first(values: np.ndarray, n: int = 5) -> str:
    return ", ".join(repr(v.item()) for v in values[:n]) + (", ..." if values.size > n else "")


def as_array(x: ArrayLike, name: str, *, ndim: int = 1) -> np.ndarray:
    """``x`` as a non-empty, finite float64 array with ``ndim`` dimensions."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric: {err}") from None
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    bad = np.flatnonzero(~np.isfinite(a.ravel()))
    if bad.size:
        raise ValueError(f"{name} has {bad.size} non-finite values (NaN or inf), first at index {bad[0]}")
    return a


def as_binary(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a 1-D float64 array of 0.0/1.0; accepts bool, int or float input."""
    a = as_array(x, name)
    bad = a[(a != 0) & (a != 1)]
    if bad.size:
        raise ValueError(f"{name} must hold only 0/1 (or bool) values, got {_first(np.unique(bad))}")
    return a


def as_probabilities(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a 1-D float64 array of values in [0, 1]."""
    a = as_array(x, name)
    bad = a[(a < 0) | (a > 1)]
    if bad.size:
        raise ValueError(f"{name} must lie in [0, 1], got {_first(bad)}")
    return a


def as_probability_rows(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a (n, C) float64 array whose rows are probability vectors (entries in [0, 1], sum 1)."""
    a = as_array(x, name, ndim=2)
    if ((a < 0) | (a > 1)).any():
        raise ValueError(f"{name} must lie in [0, 1]; pass probabilities, not logits")
    bad_rows = np.flatnonzero(np.abs(a.sum(axis=1) - 1.0) > ROW_SUM_ATOL)
    if bad_rows.size:
        raise ValueError(
            f"{name} rows must sum to 1 (+-{ROW_SUM_ATOL}); rows {_first(bad_rows)} do not. "
            "Apply softmax to logits first"
        )
    return a


def as_labels(x: ArrayLike, name: str, *, n_classes: int | None = None) -> np.ndarray:
    """``x`` as a 1-D int64 array of integer values, in [0, n_classes) when ``n_classes`` is given."""
    a = as_array(x, name)
    bad = a[a != np.round(a)]
    if bad.size:
        raise ValueError(f"{name} must hold integer class indices, got {_first(bad)}")
    labels = a.astype(np.int64)
    if n_classes is not None:
        out = labels[(labels < 0) | (labels >= n_classes)]
        if out.size:
            raise ValueError(f"{name} must lie in [0, {n_classes}), got {_first(np.unique(out))}")
    return labels


def same_length(**arrays: np.ndarray) -> None:
    """Raise unless every array has the same first dimension; the message names each argument."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"arguments must have the same length: {shown}")


def open_unit_interval(value: float, name: str) -> float:
    """``value`` as a float strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return float(value)


def int_at_least(value: int, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; bools and floats are rejected."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
