"""Scoring raw sentences with a token-classification (NER) model: per-word tags and uncertainties
equal to the model's own on each word's first sub-token, the sentence score their maximum, bad rows
quarantined, words past max_length flagged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.special import softmax

from jobs.schemas.score import Config
from jobs.score import run
from tests.jobs.score_run import sentences
from tests.tiny import save_tiny_model
from ue.config import ConfigError, load_config
from ue.scoring import read_quarantine, read_scores

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("ner"), "bert", "token_classification", num_labels=5))


def _config(root: Path, model: str, paths: list[str], **extra: Any) -> Config:
    data = {"run": {"root": str(root), "run_id": "ner"},
            "model": {"name_or_path": model, "task": "token_classification", "num_labels": 5},
            "corpus": {"paths": paths, "max_length": 16, "rows_per_block": 4}, "heads": ["msp", "entropy"],
            "tag_names": TAGS, **extra}
    return load_config(Config, data=data)


def _by_hand(model_dir: str, words: list[str], max_length: int) -> tuple[list[int], list[float]]:
    """Tags and max softmax of the words that fit, from the model run on this sentence alone."""
    import torch

    from ue.models import load_model, load_tokenizer
    from ue.tokenize import encode_tokens

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, task="token_classification", num_labels=5).eval()
    (row,) = encode_tokens(tokenizer, [words], max_length=max_length)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, row["word_starts"]].numpy()
    return logits.argmax(1).tolist(), softmax(logits.astype(np.float64), axis=1).max(1).tolist()


def test_sentences_get_per_word_tags_and_scores_and_bad_rows_are_quarantined(tmp_path, model_dir, ray_local):
    texts = sentences(9, seed=3) + ["good " * 30]  # the last is longer than max_length tokens
    lines = [json.dumps({"text": t}) for t in texts] + ['{"text": 7}']
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = run(_config(tmp_path / "runs", model_dir, [str(tmp_path / "c.jsonl")]))
    assert (summary["scored"], summary["quarantined"], summary["truncated"]) == (10, 1, 1)
    assert read_quarantine(tmp_path / "runs" / "ner" / "scores" / "quarantine")["line"].to_pylist() == [11]

    scores = read_scores(tmp_path / "runs" / "ner" / "scores").to_pylist()
    assert [r["id"] for r in scores] == [f"c.jsonl:{i}" for i in range(1, 11)]
    for text, row in zip(texts, scores, strict=True):
        words = text.split()
        tags, top = _by_hand(model_dir, words, 16)
        kept = len(tags)
        assert row["words"] == words and row["truncated"] == (kept < len(words))
        assert row["pred"] == tags + [None] * (len(words) - kept)
        assert row["tags"] == [TAGS[t] for t in tags] + [None] * (len(words) - kept)
        np.testing.assert_allclose(row["confidence"][:kept], top, atol=1e-5)
        np.testing.assert_allclose(row["u_msp"][:kept], 1 - np.array(top), atol=1e-5)
        assert row["sentence_u_msp"] == pytest.approx(max(row["u_msp"][:kept]))
        assert row["sentence_u_entropy"] == pytest.approx(max(row["u_entropy"][:kept]))


def test_a_token_model_scores_one_text_per_row(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="unset corpus.text_pair_column and ood"):
        _config(tmp_path, model_dir, [str(tmp_path)], corpus={"paths": ["x"], "text_pair_column": "b"})
