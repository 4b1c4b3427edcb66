"""Turning rows into model inputs for the three tasks; shared by fine-tuning, extraction and scoring.

Every ``encode_*`` function returns plain Python lists per row (no padding), so Ray Data can carry
them; :func:`collate` pads a list of encoded rows into tensors on the side the tokenizer asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE = -100


def encode_classification(
    tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None = None, *, max_length: int
) -> list[dict[str, list[int]]]:
    """Sequence classification rows -> ``input_ids``/``attention_mask`` per row (truncated)."""
    enc = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True, max_length=max_length)
    pairs = zip(enc["input_ids"], enc["attention_mask"], strict=True)
    return [{"input_ids": ids, "attention_mask": mask} for ids, mask in pairs]


def encode_tokens(
    tokenizer: Any, tokens: Sequence[Sequence[str]], tags: Sequence[Sequence[int]] | None = None, *, max_length: int
) -> list[dict[str, list[int]]]:
    """Token classification rows (pre-split words) -> inputs plus ``labels`` on each word's first
    sub-token (``-100`` elsewhere), ``word_starts``: the position of each kept word's first
    sub-token (words cut off by truncation are absent), and ``word_index``: which word each start
    belongs to (a word that yields no sub-token has no start, so the two can differ)."""
    enc = tokenizer([list(t) for t in tokens], is_split_into_words=True, truncation=True, max_length=max_length)
    rows = []
    for i, ids in enumerate(enc["input_ids"]):
        word_ids = enc.word_ids(i)
        starts = [pos for pos, w in enumerate(word_ids) if w is not None and (pos == 0 or word_ids[pos - 1] != w)]
        row = {"input_ids": ids, "attention_mask": enc["attention_mask"][i], "word_starts": starts,
               "word_index": [word_ids[pos] for pos in starts]}
        if tags is not None:
            labels = [IGNORE] * len(ids)
            for pos in starts:
                labels[pos] = int(tags[i][word_ids[pos]])
            row["labels"] = labels
        rows.append(row)
    return rows


def encode_causal(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str] | None = None, *, max_length: int
) -> list[dict[str, list[int]]]:
    """Causal LM rows: ``prompt + " " + answer + EOS`` with ``labels = -100`` on the prompt.

    When too long, the prompt loses tokens from its start so the answer is always kept. Without
    answers (generation), only the prompt is encoded.
    """
    rows = []
    for k, prompt in enumerate(prompts):
        p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        a_ids = [] if answers is None else tokenizer(" " + answers[k], add_special_tokens=False)["input_ids"]
        if answers is not None:
            a_ids = (a_ids + [tokenizer.eos_token_id])[: max_length - 1]
        p_ids = p_ids[max(0, len(p_ids) + len(a_ids) - max_length) :]
        ids = p_ids + a_ids
        row = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if answers is not None:
            row["labels"] = [IGNORE] * len(p_ids) + a_ids
        rows.append(row)
    return rows


def collate(rows: Sequence[dict[str, Any]], *, pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad ``input_ids`` (pad_id), ``attention_mask`` (0) and ``labels`` (-100) to the longest row."""
    width = max(len(r["input_ids"]) for r in rows)
    out: dict[str, torch.Tensor] = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE)):
        if key not in rows[0]:
            continue
        padded = [_pad(list(r[key]), width, fill, padding_side) for r in rows]
        out[key] = torch.tensor(padded, dtype=torch.long)
    return out


def _pad(values: list[int], width: int, fill: int, side: str) -> list[int]:
    pad = [fill] * (width - len(values))
    return pad + values if side == "left" else values + pad


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last non-pad token per row (n,), for left or right padding alike."""
    width = attention_mask.shape[1]
    positions = torch.arange(width, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=1).values
