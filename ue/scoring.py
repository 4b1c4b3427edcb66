"""Scoring the rows of a corpus (``jobs.score``): tokens with a truncation flag, the columns of a
score shard, the accept threshold, and reading the shards back.

A score shard ``scores/part-<file>-<block>.parquet`` has one row per good input row:

================  ========  ==================================================================
column            type      meaning
================  ========  ==================================================================
``id``            string    the row id
``pred``          int64     the model's prediction (argmax of its own logits)
``confidence``    double    ``max_c softmax(logits)_c``
``u_<head>``      double    one per head, higher = more uncertain
``ood``           double    optional: an OOD head's score (e.g. Mahalanobis distance)
``accept``        bool      optional: ``u_<decision head> <= threshold`` (METHODS.md, last section)
``truncated``     bool      the text was cut (over ``max_chars`` characters or ``max_length`` tokens)
================  ========  ==================================================================

For a token-classification model (NER) a row is a sentence, split into words at whitespace, and
the per-word values are lists aligned with ``words`` (null for a word past ``max_length`` tokens):
``id``, ``words``, ``pred`` (tag indices), ``tags`` (their names, when the config gives them),
``confidence``, ``u_<head>``, then per sentence ``sentence_u_<head>`` (the largest word score; null
when no word was scored),
``accept`` (every word's ``u_<decision head> <= threshold``) and ``truncated`` (some words unscored).

A quarantine shard ``scores/quarantine/part-<file>-<block>.parquet`` has one row per bad input row:
``file``, ``line``, ``id`` (null when unknown), ``reason``, ``raw`` (the start of its content).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ue.features import error_indicator
from ue.heads._math import msp_np
from ue.selective import Threshold, accept, select_threshold

POST_HOC_HEADS = ("msp", "entropy")
"""Heads that need no fitting: usable without a saved folder under ``heads/``."""
QUARANTINE_SCHEMA = pa.schema([("file", pa.string()), ("line", pa.int64()), ("id", pa.string()),
                               ("reason", pa.string()), ("raw", pa.string())])


def encode_flagging_truncation(
    tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None = None, *, max_length: int, max_chars: int
) -> tuple[list[dict[str, list[int]]], np.ndarray]:
    """``ue.tokenize.encode_classification`` plus, per row, whether the input had to be cut.

    Texts are first cut to ``max_chars`` characters (so one huge row cannot take the memory of a
    block), then tokenised with truncation at ``max_length`` tokens. A fast tokenizer reports the
    tokens it cut (``Encoding.overflowing``); a slow one is asked for the full length.

    Returns:
        (encoded rows with ``input_ids`` / ``attention_mask``, truncated flags of shape (n,) bool).
    """
    cut = np.array([len(t) > max_chars or (pairs is not None and len(pairs[k]) > max_chars)
                    for k, t in enumerate(texts)], dtype=bool)
    texts = [t[:max_chars] for t in texts]
    pairs = None if pairs is None else [p[:max_chars] for p in pairs]
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    if enc.encodings is not None:
        over = np.array([bool(e.overflowing) for e in enc.encodings], dtype=bool)
    else:
        full = tokenizer(texts, pairs)["input_ids"]
        over = np.array([len(ids) > max_length for ids in full], dtype=bool)
    rows = [{"input_ids": i, "attention_mask": m} for i, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
    return rows, cut | over


def score_columns(
    *,
    pred: np.ndarray,
    logits: np.ndarray,
    hidden: np.ndarray,
    heads: Mapping[str, Any],
    ood: Any | None = None,
) -> dict[str, np.ndarray]:
    """``pred``, ``confidence``, ``u_<name>`` per head and, with an OOD head, ``ood``; each (n,).

    Args:
        pred: (n,) the model's predictions; logits: (n, C); hidden: (n, d) the input of the
            classification module (``ue.extraction.classify_batch``).
        heads: name -> fitted head (``requires`` within ``hidden`` / ``logits``).
        ood: a fitted head whose score measures distance from the training data, or None.
    """
    features = {"logits": logits, "hidden": hidden}
    out = {"pred": np.asarray(pred, dtype=np.int64), "confidence": 1.0 - msp_np(logits)}
    out.update({f"u_{name}": head.uncertainty(features) for name, head in heads.items()})
    if ood is not None:
        out["ood"] = ood.uncertainty(features)
    return out


def score_schema(head_names: Sequence[str], *, ood: bool, with_accept: bool) -> pa.Schema:
    """Schema of a score shard (see the module docstring), so an empty shard has it too."""
    fields = [("id", pa.string()), ("pred", pa.int64()), ("confidence", pa.float64())]
    fields += [(f"u_{name}", pa.float64()) for name in head_names]
    fields += [("ood", pa.float64())] * ood + [("accept", pa.bool_())] * with_accept + [("truncated", pa.bool_())]
    return pa.schema(fields)


def score_table(
    ids: Sequence[str],
    columns: Mapping[str, np.ndarray],
    *,
    truncated: np.ndarray,
    schema: pa.Schema,
    decision: str | None = None,
    threshold: float | None = None,
) -> pa.Table:
    """One shard: ``columns`` from :func:`score_columns`, ``accept = u_<decision> <= threshold``
    when a decision head is given, and the ``truncated`` flags; columns ordered as ``schema``."""
    data = {"id": list(ids), **columns, "truncated": truncated}
    if decision is not None:
        data["accept"] = accept(columns[f"u_{decision}"], threshold) if len(ids) else np.zeros(0, bool)
    return pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema)


def token_score_schema(head_names: Sequence[str], *, tags: bool, with_accept: bool) -> pa.Schema:
    """Schema of a token-classification score shard (see the module docstring)."""
    fields = [("id", pa.string()), ("words", pa.list_(pa.string())), ("pred", pa.list_(pa.int64()))]
    fields += [("tags", pa.list_(pa.string()))] * tags + [("confidence", pa.list_(pa.float64()))]
    fields += [(f"u_{name}", pa.list_(pa.float64())) for name in head_names]
    fields += [(f"sentence_u_{name}", pa.float64()) for name in head_names]
    fields += [("accept", pa.bool_())] * with_accept + [("truncated", pa.bool_())]
    return pa.schema(fields)


def token_score_table(
    ids: Sequence[str],
    words: Sequence[Sequence[str]],
    *,
    sentence: np.ndarray,
    word: np.ndarray,
    columns: Mapping[str, np.ndarray],
    schema: pa.Schema,
    tag_names: Sequence[str] | None = None,
    decision: str | None = None,
    threshold: float | None = None,
) -> pa.Table:
    """One token shard from per-word values.

    Args:
        ids, words: (m,) sentence ids and each sentence's words.
        sentence, word: (n,) which sentence and which word each scored word row is.
        columns: :func:`score_columns` of the n word rows (``pred``, ``confidence``, ``u_<head>``).
        tag_names: names of the tag indices, for the ``tags`` column.
        decision, threshold: a sentence is accepted when every scored word of it has
            ``u_<decision> <= threshold`` (its largest word score does).
    """
    m = len(ids)
    lists: dict[str, list[list[Any]]] = {}
    for name, values in columns.items():
        out: list[list[Any]] = [[None] * len(w) for w in words]
        for s, w, v in zip(sentence.tolist(), word.tolist(), np.asarray(values).tolist(), strict=True):
            out[s][w] = v
        lists[name] = out
    scored = np.bincount(sentence, minlength=m) if m else np.zeros(0, np.int64)
    data: dict[str, Any] = {"id": list(ids), "words": [list(w) for w in words], **lists,
                            "truncated": [int(scored[k]) < len(words[k]) for k in range(m)]}
    if tag_names is not None:
        data["tags"] = [[None if t is None else tag_names[t] for t in row] for row in lists["pred"]]
    for name in (n for n in columns if n.startswith("u_")):
        top = np.full(m, np.nan)
        if len(sentence):
            np.fmax.at(top, sentence, np.asarray(columns[name], dtype=np.float64))
        data[f"sentence_{name}"] = pa.array(top, pa.float64(), mask=~np.isfinite(top))  # null: no word scored
    if decision is not None:
        top = np.asarray(data[f"sentence_u_{decision}"].to_numpy(zero_copy_only=False), dtype=np.float64)
        data["accept"] = np.zeros(m, bool)
        if np.isfinite(top).any():
            data["accept"][np.isfinite(top)] = accept(top[np.isfinite(top)], threshold)
    return pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema)


def calibrate(head: Any, features: Any, *, target_error: float, delta: float, min_accepted: int = 1) -> Threshold:
    """The accept threshold of ``head`` from labelled calibration ``features`` (``label``, ``pred`` and
    the head's ``requires``): ``ue.selective.select_threshold`` of its scores against the model's errors."""
    errors = error_indicator(features, who="the accept threshold")
    return select_threshold(head.uncertainty(features), errors, target_error=target_error, delta=delta,
                            min_accepted=min_accepted)


def shard_files(directory: str | os.PathLike) -> list[Path]:
    """The complete shards in ``directory``, sorted (temporary files start with a dot)."""
    folder = Path(directory)
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def read_scores(directory: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """Every score shard in ``directory`` (``scores/``) as one table, in shard order.

    ``pq.read_table("scores/")`` would also try the quarantine and progress files; this reads the
    shards only.
    """
    import pyarrow.parquet as pq

    files = shard_files(directory)
    if not files:
        raise FileNotFoundError(f"{directory} holds no part-*.parquet shard: run the score stage first")
    return pa.concat_tables([pq.read_table(f, columns=list(columns) if columns else None) for f in files])


def duplicate_ids(directory: str | os.PathLike, *, examples: int = 5) -> tuple[int, list[str]]:
    """Rows of the shards in ``directory`` whose id an earlier row (in shard order) already had, and
    the first ``examples`` such ids. Duplicates are kept and scored (each row is scored as given);
    the score summary counts them so a user who expects unique ids sees that they are not."""
    import pyarrow.compute as pc

    files = shard_files(directory)
    if not files:
        return 0, []
    ids = read_scores(directory, columns=["id"])["id"]
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    extra = int(pc.sum(pc.subtract(repeated.field("counts"), 1)).as_py() or 0)
    return extra, repeated.field("values").to_pylist()[:examples]


def read_quarantine(directory: str | os.PathLike) -> pa.Table:
    """Every bad row set aside in ``directory`` (``scores/quarantine/``); empty when there were none."""
    import pyarrow.parquet as pq

    return pa.concat_tables([QUARANTINE_SCHEMA.empty_table(), *(pq.read_table(f) for f in shard_files(directory))])
