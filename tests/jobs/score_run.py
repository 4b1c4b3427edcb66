"""Run directories and corpora for the score stage's tests: a tiny BERT, its cached val features,
fitted heads, and corpus files seeded with every kind of bad row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ue.artifacts import RunLayout, atomic_write_json

WORDS = ("good", "bad", "film", "plot", "boring", "great", "actors", "slow", "funny", "dull", "the", "a")


def sentences(n: int, *, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 12))) for _ in range(n)]


def model_features(model: Any, tokenizer: Any, texts: list[str], *, max_length: int = 64) -> dict[str, np.ndarray]:
    """``pred``, ``logits`` and ``hidden`` of ``texts``, in batches of 64 rows of similar length."""
    from ue.extraction import classify_batch, length_batches
    from ue.tokenize import collate, encode_classification

    encoded = encode_classification(tokenizer, texts, max_length=max_length)
    order, outs = [], []
    for idx in length_batches([len(e["input_ids"]) for e in encoded], batch_size=64):
        outs.append(classify_batch(model, **collate([encoded[i] for i in idx], pad_id=tokenizer.pad_token_id)))
        order.append(idx)
    back = np.argsort(np.concatenate(order))
    return {k: np.concatenate([getattr(o, k) for o in outs])[back] for k in ("pred", "logits", "hidden")}


def write_features(layout: RunLayout, model_dir: str, texts: list[str], labels: np.ndarray, *, split: str = "val",
                   adapter: str | None = None) -> dict[str, np.ndarray]:
    """Cache the model's features of ``texts`` as the extract stage does (parts, classifier, features.json)."""
    from ue.feature_cache import feature_table, write_part
    from ue.heads import classifier_from_model, save_classifier
    from ue.models import load_model, load_tokenizer

    model = load_model(model_dir, task="sequence_classification", num_labels=2).eval()
    out = model_features(model, load_tokenizer(model_dir), texts)
    ids = [f"{split}-{i}" for i in range(len(texts))]
    write_part(feature_table(ids=ids, label=labels, **out), layout.features_split_dir(split) / "part-00000.parquet")
    save_classifier(classifier_from_model(model), layout.features_dir)
    atomic_write_json(layout.features_meta, {"model": model_dir, "adapter": adapter, "task": "sequence_classification",
                                             "num_labels": 2, "hidden_size": out["hidden"].shape[1]})
    return {**out, "label": labels}


def write_scoring_run(root: Path, run_id: str, model_dir: str, *, n_val: int = 240) -> RunLayout:
    """Val features with labels that disagree with the model on its least confident third; ALIEN and
    Mahalanobis fitted on them and saved under heads/."""
    from ue.heads import build_head, load_classifier
    from ue.heads._math import msp_np

    layout = RunLayout(root, run_id)
    texts = sentences(n_val, seed=1)
    features = write_features(layout, model_dir, texts, np.zeros(n_val, dtype=np.int64))
    unsure = msp_np(features["logits"]) > np.quantile(msp_np(features["logits"]), 2 / 3)
    labels = np.where(unsure, 1 - features["pred"], features["pred"])
    features = write_features(layout, model_dir, texts, labels)
    alien = build_head("alien", classifier=load_classifier(layout.features_dir), epochs=2, lr=1e-3)
    alien.fit(features, features).save(layout.head_dir("alien"))
    build_head("mahalanobis", shrinkage=0.1).fit(features).save(layout.head_dir("mahalanobis"))
    return layout


BAD_JSONL_LINES = {
    # line content -> the start of the reason the quarantine must give
    '{"text": "no closing brace"': "malformed JSON",
    '{"body": "the text field is missing"}': "missing text",
    '{"text": null}': "missing text",
    '{"text": "   "}': "empty text",
    '{"text": 42}': "wrong type",
    '{"text": ["a", "list"]}': "wrong type",
    '["not", "an", "object"]': "not a JSON object",
    '{"text": "lone \\ud800 surrogate"}': "undecodable text",
}


def write_mixed_corpus(folder: Path, *, n_good: int = 30, seed: int = 0) -> dict[str, Any]:
    """A JSONL file with every kind of bad row among good ones (one undecodable line, one over-long
    text), a CSV with a quoted newline and a short record, a text file and a Parquet file.

    Returns the expected good ids, the expected bad rows {(file name, line): reason start} and the
    id of the over-long row.
    """
    folder.mkdir(parents=True, exist_ok=True)
    # (line bytes, None for a good row / "" for a blank line / the start of a bad row's reason)
    lines: list[tuple[bytes, str | None]] = [(json.dumps({"text": t}).encode(), None)
                                             for t in sentences(n_good, seed=seed)]
    for k, (content, reason) in enumerate(BAD_JSONL_LINES.items()):
        lines.insert(2 + 3 * k, (content.encode(), reason))
    lines.insert(5, (b'{"text": "invalid \xff\xfe bytes"}', "undecodable bytes"))
    lines.insert(9, (b"", ""))
    lines.append((json.dumps({"text": "long " * 400}).encode(), None))
    (folder / "docs.jsonl").write_bytes(b"\n".join(raw for raw, _ in lines) + b"\n")
    good = [f"docs.jsonl:{n}" for n, (_, why) in enumerate(lines, 1) if why is None]
    bad = {("docs.jsonl", n): why for n, (_, why) in enumerate(lines, 1) if why}
    long_id = good[-1]
    (folder / "table.csv").write_text('text,source\n"two\nlines",a\nplain row,b\nshort\n"",c\n', encoding="utf-8")
    good += ["table.csv:2", "table.csv:4"]
    bad[("table.csv", 5)], bad[("table.csv", 6)] = "wrong number of fields", "empty text"
    (folder / "notes.txt").write_text("first note\n\nsecond note\n", encoding="utf-8")
    good += ["notes.txt:1", "notes.txt:3"]
    pq.write_table(pa.table({"text": ["parquet one", None, "parquet three"]}), folder / "rows.parquet")
    good += ["rows.parquet:1", "rows.parquet:3"]
    bad[("rows.parquet", 2)] = "missing text"
    return {"good": good, "bad": bad, "long": long_id}
