"""Token-level tasks (NER): word rows grouped into sentences, and entity-level F1.

Token features have one row per word (its first sub-token) with id ``<sentence id>/<word index>``
(``ue.extraction``). A sentence is wrong when any of its words is; its uncertainty is the largest
of its words' (higher = more uncertain): one unsure word makes the sentence unsure. Entity F1 is
CoNLL's (an entity counts when its type and both ends match), computed by ``seqeval``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["entity_f1", "sentence_level", "split_word_ids"]


def split_word_ids(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``<sentence>/<word>`` ids -> (sentence ids (n,) as str, word indices (n,) as int).

    Raises:
        ValueError: an id without a ``/<integer>`` word part (not token features).
    """
    sentences, words = [], []
    for row_id in ids:
        sentence, sep, word = str(row_id).rpartition("/")
        if not sep or not word.isdigit():
            raise ValueError(f"id {row_id!r} is not a word id <sentence id>/<word index>; are these token features?")
        sentences.append(sentence)
        words.append(int(word))
    return np.asarray(sentences, dtype=object), np.asarray(words, dtype=np.int64)


def sentence_level(ids: Sequence[str], scores: ArrayLike, errors: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per sentence: the max word score and whether any word is wrong, in order of first appearance.

    Args:
        ids: (n,) word ids ``<sentence>/<word>``.
        scores: (n,) word uncertainties, higher = more uncertain.
        errors: (n,) 1 where the word's predicted tag is wrong.

    Returns:
        (m,) float64 sentence scores and (m,) int64 sentence errors, m = number of sentences.
    """
    sentences, _ = split_word_ids(ids)
    _, first, index = np.unique(sentences, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # sentences in the order they first appear
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group = rank[index]
    score = np.full(len(order), -np.inf)
    np.maximum.at(score, group, np.asarray(scores, dtype=np.float64))
    error = np.zeros(len(order), dtype=np.int64)
    np.maximum.at(error, group, np.asarray(errors, dtype=np.int64))
    return score, error


def entity_f1(ids: Sequence[str], pred: ArrayLike, label: ArrayLike, tag_names: Sequence[str]) -> float:
    """CoNLL entity-level micro F1 of the predicted tags (seqeval's default, IOB2 tags).

    Args:
        ids: (n,) word ids ``<sentence>/<word>``; words are ordered by index within each sentence.
        pred, label: (n,) predicted and gold tag indices into ``tag_names`` (e.g. ``["O", "B-PER", ...]``).
    """
    from seqeval.metrics import f1_score

    sentences, words = split_word_ids(ids)
    names = np.asarray(tag_names, dtype=object)
    order = np.lexsort((words, sentences))
    gold, guess = names[np.asarray(label)[order]], names[np.asarray(pred)[order]]
    cuts = np.flatnonzero(sentences[order][1:] != sentences[order][:-1]) + 1
    return float(f1_score([list(s) for s in np.split(gold, cuts)], [list(s) for s in np.split(guess, cuts)]))
