"""The on-disk feature cache: Parquet part files with a fixed schema, and the checks that guard it.

Layout (``ue.artifacts.RunLayout``): ``features/split=<split>/part-NNNNN.parquet`` plus
``features/features.json`` and the classification module (``classifier.json`` /
``classifier.safetensors``). Every part file has

==========  ================================  ==============================================
column      Arrow type                        meaning
==========  ================================  ==============================================
``id``      string                            stable row id (``<sentence id>/<word>`` for NER)
``label``   int64                             gold label (QA: 1 if the answer is correct)
``pred``    int64                             the model's prediction (QA: always 1)
``logits``  fixed_size_list<float32>[C]       the model's logits
``hidden``  fixed_size_list<float32>[d]       the input of the classification module
...         task columns                      e.g. ``word``, ``rouge_l``, ``perplexity``
==========  ================================  ==============================================

Part ``k`` holds input rows ``[k * rows_per_part, (k + 1) * rows_per_part)`` and is written whole
under a temporary name, then renamed: a part file that exists is complete, so an interrupted
extraction resumes by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ue.artifacts import atomic_write_bytes, read_json
from ue.features import MissingColumnError

FEATURE_COLUMNS = ("id", "label", "pred", "logits", "hidden")
"""The columns every part file starts with."""
CLASSIFIER_FILES = ("classifier.json", "classifier.safetensors")
"""What ``ue.heads.modules.save_classifier`` writes beside the features."""


def fixed_size_list(values: np.ndarray) -> pa.FixedSizeListArray:
    """A (n, k) array as an Arrow ``fixed_size_list<float32>[k]`` column (no per-row objects)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D array (n, k), got shape {values.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def feature_table(
    *,
    ids: Sequence[str],
    label: np.ndarray,
    pred: np.ndarray,
    logits: np.ndarray,
    hidden: np.ndarray,
    extra: Mapping[str, Any] | None = None,
) -> pa.Table:
    """One part's rows with the documented schema; ``extra`` adds task columns after the fixed ones.

    Shapes: ids, label, pred (n,); logits (n, C); hidden (n, d).
    """
    columns: dict[str, Any] = {
        "id": pa.array(list(ids), pa.string()),
        "label": pa.array(np.asarray(label, dtype=np.int64)),
        "pred": pa.array(np.asarray(pred, dtype=np.int64)),
        "logits": fixed_size_list(logits),
        "hidden": fixed_size_list(hidden),
    }
    for name, values in (extra or {}).items():
        columns[name] = values if isinstance(values, pa.Array) else pa.array(values)
    return pa.table(columns)


def part_path(split_dir: str | os.PathLike, index: int) -> Path:
    return Path(split_dir) / f"part-{index:05d}.parquet"


def write_part(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write ``table`` as Parquet under ``path`` atomically (temporary name, fsync, rename)."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


def part_files(split_dir: str | os.PathLike) -> list[Path]:
    """The complete part files of a split, in part order (temporary files are not listed)."""
    folder = Path(split_dir)
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def part_index(path: str | os.PathLike) -> int:
    return int(Path(path).stem.removeprefix("part-"))


def read_meta(features_dir: str | os.PathLike) -> dict[str, Any]:
    """``features.json``; a missing file says which stage writes it."""
    path = Path(features_dir) / "features.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the extract stage for this run first")
    return read_json(path)


def check_feature_files(
    files: Sequence[str | os.PathLike],
    *,
    needs: Mapping[str, str],
    hidden_size: int,
    num_labels: int,
) -> None:
    """Check each Parquet file's schema before any work starts (only file footers are read).

    Args:
        files: part files to check.
        needs: column -> who needs it (named in the error), e.g. ``{"hidden": "head 'alien'"}``.
        hidden_size, num_labels: d and C from ``features.json``.

    Raises:
        MissingColumnError: a needed column is absent; names the file, the column and who needs it.
        ValueError: ``hidden`` / ``logits`` are not float32 lists of width d / C; names the file.
    """
    import pyarrow.parquet as pq

    if not files:
        raise FileNotFoundError("no feature files to read: run the extract stage for these splits first")
    widths = {"hidden": (hidden_size, "hidden_size d"), "logits": (num_labels, "num_labels C")}
    for path in files:
        schema = pq.read_schema(path)
        for column, who in needs.items():
            if column not in schema.names:
                raise MissingColumnError(
                    f"{path}: {who} needs column {column!r}, which is not cached there "
                    f"(columns: {', '.join(schema.names)})"
                )
        for column, (width, what) in widths.items():
            if column in schema.names:
                _check_width(path, column, schema.field(column).type, width, what)


def _check_width(path: Any, column: str, kind: pa.DataType, width: int, what: str) -> None:
    if not pa.types.is_fixed_size_list(kind) or not pa.types.is_float32(kind.value_type):
        raise ValueError(f"{path}: column {column!r} has type {kind}, expected fixed_size_list<float32>[{width}]")
    if kind.list_size != width:
        raise ValueError(
            f"{path}: column {column!r} has width {kind.list_size}, but features.json says {what} = {width}; "
            "the file comes from another model: re-run the extract stage with run.force=true"
        )
