"""Token-level metrics: sentences from word rows (max score, any error) and CoNLL entity F1."""

from __future__ import annotations

import numpy as np
import pytest

from ue.metrics.tokens import entity_f1, sentence_level, split_word_ids

TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def test_sentences_take_the_largest_word_score_and_any_word_error():
    ids = ["s2/0", "s1/1", "s2/1", "s1/0", "s3/0"]
    score, error = sentence_level(ids, [0.1, 0.7, 0.4, 0.2, 0.9], [0, 0, 1, 0, 0])
    np.testing.assert_allclose(score, [0.4, 0.7, 0.9])  # s2, s1, s3: first appearance
    assert error.tolist() == [1, 0, 0]


def test_entity_f1_matches_a_hand_count_whatever_the_row_order():
    # s1 gold: PER(0-1) LOC(3); pred: PER(0-1) ORG(3).  s2 gold: ORG(0-1); pred: ORG(0) only (wrong end).
    rows = [("s1/0", 1, 1), ("s1/1", 2, 2), ("s1/2", 0, 0), ("s1/3", 5, 3), ("s2/0", 3, 3), ("s2/1", 4, 0)]
    # 3 gold entities, 3 predicted, 1 right (PER): precision = recall = F1 = 1/3.
    rng = np.random.default_rng(0)
    for _ in range(3):
        shuffled = [rows[i] for i in rng.permutation(len(rows))]
        ids, gold, pred = zip(*shuffled, strict=True)
        assert entity_f1(ids, pred, gold, TAGS) == pytest.approx(1 / 3)
    ids, gold, _ = zip(*rows, strict=True)
    assert entity_f1(ids, gold, gold, TAGS) == 1.0


def test_ids_that_are_not_word_ids_are_refused():
    assert split_word_ids(["a/b/3"])[0].tolist() == ["a/b"]
    with pytest.raises(ValueError, match="not a word id"):
        split_word_ids(["sentence-7"])
