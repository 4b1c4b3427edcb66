"""Score shards: the truncation flag, the columns against hand-computed values, the accept rule."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.tiny import MINILM
from ue.heads import build_head
from ue.models import load_tokenizer
from ue.scoring import (
    QUARANTINE_SCHEMA,
    calibrate,
    duplicate_ids,
    encode_flagging_truncation,
    read_quarantine,
    read_scores,
    score_columns,
    score_schema,
    score_table,
    token_score_schema,
    token_score_table,
)
from ue.selective import select_threshold


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MINILM)


def test_truncation_is_flagged_by_tokens_and_by_characters(tokenizer):
    texts = ["one two three four five six", "one two three four five six seven", "short", "a" * 50]
    rows, cut = encode_flagging_truncation(tokenizer, texts, max_length=8, max_chars=40)
    # 6 words + [CLS] + [SEP] fit in 8 tokens; 7 do not; 50 characters exceed max_chars
    assert cut.tolist() == [False, True, False, True]
    assert [len(r["input_ids"]) for r in rows[:3]] == [8, 8, 3]
    assert rows[1]["input_ids"][-1] == tokenizer.sep_token_id
    _, cut = encode_flagging_truncation(tokenizer, ["a b", "a b"], ["c d e f g h", "c"], max_length=8, max_chars=99)
    assert cut.tolist() == [True, False]


def test_score_columns_match_hand_computed_values():
    logits = np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, 3.0]])
    cols = score_columns(pred=np.array([0, 0, 1]), logits=logits, hidden=np.zeros((3, 4)),
                         heads={"msp": build_head("msp"), "entropy": build_head("entropy")})
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(cols["confidence"], p.max(1))
    np.testing.assert_allclose(cols["u_msp"], 1 - p.max(1))
    np.testing.assert_allclose(cols["u_entropy"], -(p * np.log(p)).sum(1) / math.log(2))
    assert cols["u_entropy"][1] == pytest.approx(1.0) and "ood" not in cols


def test_score_table_accepts_at_or_below_the_threshold_and_keeps_the_schema():
    schema = score_schema(["msp"], ood=False, with_accept=True)
    cols = {"pred": np.array([0, 1, 1]), "confidence": np.array([0.9, 0.7, 0.6]), "u_msp": np.array([0.1, 0.3, 0.4])}
    table = score_table(["a", "b", "c"], cols, truncated=np.array([False, True, False]), schema=schema,
                        decision="msp", threshold=0.3)
    assert table.schema == schema
    assert table.column_names == ["id", "pred", "confidence", "u_msp", "accept", "truncated"]
    assert table["accept"].to_pylist() == [True, True, False]
    nothing = score_table(["a"], {k: v[:1] for k, v in cols.items()}, truncated=np.array([False]), schema=schema,
                          decision="msp", threshold=-math.inf)
    assert nothing["accept"].to_pylist() == [False]
    assert score_schema([], ood=True, with_accept=False).names == ["id", "pred", "confidence", "ood", "truncated"]


def test_calibrate_is_select_threshold_on_the_heads_scores():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 3)) * 3
    pred = logits.argmax(1)
    wrong = rng.random(300) < build_head("msp").uncertainty({"logits": logits})  # the less sure, the more wrong
    label = np.where(wrong, (pred + 1) % 3, pred)
    features = {"logits": logits, "pred": pred, "label": label}
    got = calibrate(build_head("msp"), features, target_error=0.1, delta=0.1)
    want = select_threshold(build_head("msp").uncertainty(features), (pred != label).astype(int),
                            target_error=0.1, delta=0.1)
    assert got == want and got.coverage > 0


def test_reading_shards_skips_everything_else(tmp_path):
    schema = score_schema(["msp"], ood=False, with_accept=False)
    for k in range(2):
        table = pa.table({"id": [f"r{k}"], "pred": [0], "confidence": [0.5], "u_msp": [0.5], "truncated": [False]},
                         schema=schema)
        pq.write_table(table, tmp_path / f"part-00000-{k:06d}.parquet")
    pq.write_table(schema.empty_table(), tmp_path / "part-00001-000000.parquet")
    (tmp_path / "progress").mkdir()
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / ".part-00002-000000.parquet.x.tmp").write_text("half written")
    assert read_scores(tmp_path)["id"].to_pylist() == ["r0", "r1"]
    assert read_quarantine(tmp_path / "quarantine").schema == QUARANTINE_SCHEMA
    with pytest.raises(FileNotFoundError, match="run the score stage"):
        read_scores(tmp_path / "progress")


def test_repeated_ids_across_shards_are_counted_once_per_extra_copy(tmp_path):
    schema = score_schema([], ood=False, with_accept=False)
    for k, ids in enumerate((["a", "dup1", "b"], ["dup1", "c", "dup2"], ["dup1", "dup2"])):
        table = pa.table({"id": ids, "pred": [0] * len(ids), "confidence": [0.5] * len(ids),
                          "truncated": [False] * len(ids)}, schema=schema)
        pq.write_table(table, tmp_path / f"part-00000-{k:06d}.parquet")
    assert duplicate_ids(tmp_path) == (3, ["dup1", "dup2"])  # dup1: 2 extra copies, dup2: 1
    assert duplicate_ids(tmp_path / "none") == (0, [])


def test_a_token_shard_aligns_words_and_accepts_a_sentence_when_every_word_is_under_the_threshold():
    schema = token_score_schema(["msp"], tags=True, with_accept=True)
    # Sentence a: 3 words, the middle one never scored (no sub-token); b: 2 words; c: 1 word, unscored.
    sentence, word = np.array([1, 0, 1, 0]), np.array([1, 2, 0, 0])
    columns = {"pred": np.array([2, 1, 0, 0]), "confidence": np.array([0.6, 0.7, 0.9, 0.8]),
               "u_msp": np.array([0.4, 0.3, 0.1, 0.2])}
    table = token_score_table(["a", "b", "c"], [["x", "y", "z"], ["p", "q"], ["w"]], sentence=sentence, word=word,
                              columns=columns, schema=schema, tag_names=["O", "B", "I"], decision="msp",
                              threshold=0.35)
    rows = table.to_pylist()
    assert rows[0] == {"id": "a", "words": ["x", "y", "z"], "pred": [0, None, 1], "tags": ["O", None, "B"],
                       "confidence": [0.8, None, 0.7], "u_msp": [0.2, None, 0.3], "sentence_u_msp": 0.3,
                       "accept": True, "truncated": True}
    assert rows[1]["u_msp"] == [0.1, 0.4] and rows[1]["sentence_u_msp"] == 0.4 and rows[1]["accept"] is False
    assert rows[2]["sentence_u_msp"] is None and rows[2]["accept"] is False and rows[2]["truncated"] is True
    assert table.schema == schema
