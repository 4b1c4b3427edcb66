"""Reading labelled datasets into Arrow tables with our column names (DESIGN.md, "Input data").

A dataset is named by a local file (.jsonl/.csv/.parquet), a folder under the data root
(``$UE_DATA_DIR/<name>/<split stem>.jsonl``) or, failing both, an HF Hub name (``glue/sst2``). Rows
come back with our names (``text``, ``text_pair``, ``label``, ``tokens``, ``tags``, ``prompt``,
``answer``, ...), a stable ``id`` (given, or ``<split stem>-<row number>``), and are checked: a
missing column or a bad label names the file, the row and the column.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from ue.config.paths import data_root

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
REQUIRED = {
    "sequence_classification": ("text", "label"),
    "token_classification": ("tokens", "tags"),
    "causal_lm": ("prompt", "answer"),
}
QA_COLUMNS = ("question", "answers")


class DataError(ValueError):
    """Bad input data; the message names the file, the row and the column."""


def resolve_split_file(name: str, stem: str, *, root: Path | None = None) -> Path | None:
    """The local file that holds split ``stem`` of dataset ``name``, or None (then: the HF Hub)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    folder = path if path.is_dir() else (root or data_root() or Path("/nonexistent")) / name
    for suffix in FILE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    if folder.is_dir():
        have = sorted(p.name for p in folder.iterdir() if p.suffix in FILE_SUFFIXES)
        raise DataError(f"{folder}: no split file {stem!r} (have: {', '.join(have)}); map the split to one of "
                        "them with data.splits, or for a dataset without a validation file set "
                        "data.val_from_train: 0.1")
    return None


def read_file(path: Path) -> pa.Table:
    """A JSONL, CSV or Parquet file as an Arrow table; a malformed line names the file and line."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        return pacsv.read_csv(path)
    rows, lines = [], []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: malformed JSON ({e.msg})") from None
            lines.append(line_no)
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise DataError(_first_type_clash(rows, lines, path)) from None


def _first_type_clash(rows: list[dict], lines: list[int], path: Path) -> str:
    """Name the first line whose value type differs from the column's first non-null value."""
    seen: dict[str, type] = {}
    for row, line_no in zip(rows, lines, strict=True):
        for key, value in row.items():
            if value is None:
                continue
            first = seen.setdefault(key, type(value))
            if type(value) is not first:
                return (f"{path}:{line_no}: column {key!r} holds {type(value).__name__} {value!r} where earlier "
                        f"rows hold {first.__name__}")
    return f"{path}: rows cannot be read as one table (mixed value types)"


def _from_hub(name: str, stem: str) -> pa.Table:
    import datasets

    parts = name.split("/")
    args = parts if len(parts) == 2 and parts[0] in {"glue", "super_glue"} else [name]
    return datasets.load_dataset(*args, split=stem).data.table


def load_split(
    name: str,
    split: str,
    *,
    task: str,
    columns: Mapping[str, str] | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    root: Path | None = None,
) -> pa.Table:
    """Split ``split`` (file stem / HF split) of dataset ``name`` with our column names.

    ``max_rows`` keeps a seeded random subset (in file order, so ids stay stable).
    """
    path = resolve_split_file(name, split, root=root)
    table = read_file(path) if path is not None else _from_hub(name, split)
    source = str(path) if path is not None else f"hf://{name}[{split}]"
    table = _rename(table, dict(columns or {}), source)
    if task == "causal_lm" and "prompt" not in table.column_names and "question" in table.column_names:
        table = qa_to_prompts(table)
    if "id" not in table.column_names:
        table = table.append_column("id", pa.array([f"{split}-{i}" for i in range(table.num_rows)]))
    else:
        table = table.set_column(table.column_names.index("id"), "id", table.column("id").cast(pa.string()))
    table = subsample(table, max_rows, seed=seed)
    _check(table, task, source)
    return table


def load_dataset_split(
    name: str,
    split: str,
    *,
    splits: Mapping[str, str],
    task: str,
    columns: Mapping[str, str] | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    val_from_train: float | None = None,
    root: Path | None = None,
) -> pa.Table:
    """Our split ``split`` (train / val / test) of dataset ``name``; ``splits`` maps ours to file stems.

    With ``val_from_train`` (a fraction in (0, 1)), val is carved out of the train file instead of
    read from its own: a row is val when the hash of ``(seed, id)`` falls below the fraction
    (:func:`id_share`), so the same rows are val in every stage and run, whatever ``max_rows`` keeps;
    train is the rest. ``max_rows`` then subsamples the carved split.
    """
    if val_from_train is None or split == "test":
        return load_split(name, splits[split], task=task, columns=columns, max_rows=max_rows, seed=seed, root=root)
    table = load_split(name, splits["train"], task=task, columns=columns, seed=seed, root=root)
    in_val = id_share(table.column("id").to_pylist(), val_from_train, seed=seed)
    carved = table.filter(pa.array(in_val if split == "val" else ~in_val))
    return subsample(carved, max_rows, seed=seed)


def subsample(table: pa.Table, max_rows: int | None, *, seed: int) -> pa.Table:
    """A seeded random subset of at most ``max_rows`` rows, in file order (so ids stay stable)."""
    if max_rows is None or max_rows >= table.num_rows:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, max_rows, replace=False))
    return table.take(pa.array(keep))


def id_share(ids: Sequence[str], fraction: float, *, seed: int, salt: str = "") -> np.ndarray:
    """(n,) bool: the rows whose id falls in a seeded share ``fraction`` of the id space.

    A row's membership depends only on its id, the seed and ``salt`` (a hash, not Python's per-process
    hash()), so it is the same in every process, stage and run, and does not move when other rows are
    added. Each use of a split takes its own ``salt``: with one hash, the rows carved out as val
    (hash < 0.1) would all land in any later share of val (hash < 0.5) drawn with the same seed.
    """
    return np.fromiter((unit_hash(f"{salt}{seed}:{i}") < fraction for i in ids), dtype=bool, count=len(ids))


def unit_hash(text: str) -> float:
    """A stable number in [0, 1) from ``text``."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2.0**64


def _rename(table: pa.Table, columns: dict[str, str], source: str) -> pa.Table:
    missing = [theirs for theirs in columns.values() if theirs not in table.column_names]
    if missing:
        raise DataError(
            f"{source}: column(s) {', '.join(map(repr, missing))} named in data.columns are not in the file "
            f"(columns: {', '.join(table.column_names)})"
        )
    inverse = {theirs: ours for ours, theirs in columns.items()}
    if "ner_tags" in table.column_names and "tags" not in table.column_names and "tags" not in columns:
        inverse.setdefault("ner_tags", "tags")
    return table.rename_columns([inverse.get(c, c) for c in table.column_names])


def qa_to_prompts(table: pa.Table) -> pa.Table:
    """QA rows (``question``, ``answers``, optional ``context``) as ``prompt``/``answer`` rows."""
    rows = table.to_pylist()
    prompts = [qa_prompt(r["question"], r.get("context")) for r in rows]
    answers = [(r.get("answers") or [""])[0] if isinstance(r.get("answers"), list) else r.get("answers") for r in rows]
    table = table.append_column("prompt", pa.array(prompts))
    return table.append_column("answer", pa.array(answers, pa.string()))


def qa_prompt(question: str, context: str | None = None) -> str:
    """The prompt a causal LM answers; the answer follows after one space."""
    head = f"Context: {context}\n" if context else ""
    return f"{head}Question: {question}\nAnswer:"


def _check(table: pa.Table, task: str, source: str) -> None:
    if task not in REQUIRED:
        raise DataError(f"unknown task {task!r}; known: {', '.join(REQUIRED)}")
    for col in REQUIRED[task]:
        if col not in table.column_names:
            raise DataError(
                f"{source}: task {task} needs column {col!r}, which is missing (columns: "
                f"{', '.join(table.column_names)}); map it with data.columns.{col}=<file column>"
            )
    if task == "sequence_classification":
        _check_int_column(table, "label", source)
    if task == "token_classification":
        _check_tags(table, source)


def _check_int_column(table: pa.Table, col: str, source: str) -> None:
    values = table.column(col).to_pylist()
    for row, v in enumerate(values):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise DataError(f"{source}: row {row}: column {col!r} must be a non-negative int, got {v!r}")


def _check_tags(table: pa.Table, source: str) -> None:
    pairs = zip(table.column("tokens").to_pylist(), table.column("tags").to_pylist(), strict=True)
    for row, (tokens, tags) in enumerate(pairs):
        if tokens is None or tags is None or len(tokens) != len(tags):
            raise DataError(f"{source}: row {row}: 'tokens' and 'tags' must be lists of the same length")


def num_labels(tables: Sequence[pa.Table], task: str, *, name: str | None = None, root: Path | None = None) -> int:
    """Classes of a classification dataset: ``labels.json`` beside the data if any, else max label + 1."""
    folder = (root or data_root() or Path("/nonexistent")) / name if name else None
    if folder is not None and (folder / "labels.json").is_file():
        return len(json.loads((folder / "labels.json").read_text(encoding="utf-8")))
    col = "label" if task == "sequence_classification" else "tags"
    values = [t.column(col).combine_chunks() for t in tables]
    flat = [v.flatten() if pa.types.is_list(v.type) or pa.types.is_large_list(v.type) else v for v in values]
    return int(max(np.max(np.asarray(v)) for v in flat if len(v))) + 1


def check_labels(table: pa.Table, task: str, n: int, *, source: str) -> None:
    """Every label (or tag) lies in ``[0, n)``; the error names the first bad row."""
    col = "label" if task == "sequence_classification" else "tags"
    for row, v in enumerate(table.column(col).to_pylist()):
        values = v if isinstance(v, list) else [v]
        if any(x is None or not 0 <= x < n for x in values):
            raise DataError(f"{source}: row {row}: {col} {v!r} out of range [0, {n}) for model.num_labels={n}")

