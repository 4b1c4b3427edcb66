"""Access to cached feature tables (DESIGN.md, "Feature cache").

A feature table has one row per example with ``id``, ``label``, ``pred``, ``logits`` (C floats),
``hidden`` (d floats) and task columns. Heads accept it as a pyarrow Table, a pandas DataFrame or a
plain mapping of column name to array; this module turns any of them into NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

VECTOR_COLUMNS = ("logits", "hidden")
"""Columns stored as ``fixed_size_list<float32>`` and returned as 2-D arrays."""


class MissingColumnError(KeyError):
    """A head or job asked for a column the feature table does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def column_names(features: Any) -> list[str]:
    if hasattr(features, "column_names"):  # pyarrow.Table
        return list(features.column_names)
    if hasattr(features, "columns"):  # pandas.DataFrame
        return [str(c) for c in features.columns]
    if isinstance(features, Mapping):
        return list(features)
    raise TypeError(f"features must be a pyarrow Table, pandas DataFrame or mapping, got {type(features)}")


def num_rows(features: Any) -> int:
    if hasattr(features, "num_rows"):
        return int(features.num_rows)
    if hasattr(features, "columns"):
        return len(features)
    names = column_names(features)
    return len(features[names[0]]) if names else 0


def column(features: Any, name: str, *, who: str = "this step") -> np.ndarray:
    """Column ``name`` as a NumPy array: shape (n,) for scalars, (n, k) for vector columns.

    Raises:
        MissingColumnError: naming the column, who asked and the columns that exist.
    """
    names = column_names(features)
    if name not in names:
        raise MissingColumnError(
            f"{who} needs column {name!r}, which is not in the features (columns: {', '.join(names)})"
        )
    if hasattr(features, "num_rows"):
        return _arrow_column(features.column(name), name)
    values = features[name]
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    if isinstance(values, np.ndarray) and values.dtype == object:
        return np.stack(values) if len(values) else np.zeros((0, 0), np.float32)
    return np.asarray(values)


def _arrow_column(col: Any, name: str) -> np.ndarray:
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return np.stack(col.to_numpy(zero_copy_only=False)) if len(col) else np.zeros((0, 0), np.float32)
    return col.to_numpy(zero_copy_only=False)


def error_indicator(features: Any, *, who: str = "this step") -> np.ndarray:
    """``e = 1[pred != label]`` of the frozen model, shape (n,), int64 (METHODS.md)."""
    pred = column(features, "pred", who=who)
    label = column(features, "label", who=who)
    return (pred != label).astype(np.int64)


def select_columns(features: Any, names: tuple[str, ...] | list[str], *, who: str) -> dict[str, np.ndarray]:
    """Only the named columns, as arrays; used so a head reads nothing it did not declare."""
    return {n: column(features, n, who=who) for n in names}
