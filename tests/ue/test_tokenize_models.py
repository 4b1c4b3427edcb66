"""Tokenisation for the three tasks, padding, and model/adapter loading through from_pretrained."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import MINILM, save_tiny_model
from ue.models import apply_lora, load_model, load_tokenizer, resolve_model_path
from ue.tokenize import IGNORE, collate, encode_causal, encode_classification, encode_tokens, last_token_index


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MINILM)


def test_packaged_minilm_resolves_to_a_local_folder():
    path = resolve_model_path(MINILM)
    assert path.endswith("model") and resolve_model_path("org/unknown-model") == "org/unknown-model"


def test_token_labels_sit_on_first_subtokens(tok):
    rows = encode_tokens(tok, [["Unbelievably", "good"]], [[3, 1]], max_length=32)
    ids, labels, starts = rows[0]["input_ids"], rows[0]["labels"], rows[0]["word_starts"]
    assert len(starts) == 2 and [labels[p] for p in starts] == [3, 1]
    assert sum(label != IGNORE for label in labels) == 2 and ids[0] == tok.cls_token_id


def test_causal_rows_mask_the_prompt_and_keep_the_answer_when_truncated(tok):
    long_prompt = "word " * 100
    row = encode_causal(tok, [long_prompt], ["Paris"], max_length=16)[0]
    assert len(row["input_ids"]) == 16
    answer = tok(" Paris", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert row["input_ids"][-len(answer):] == answer
    assert row["labels"] == [IGNORE] * (16 - len(answer)) + answer


@pytest.mark.parametrize("side", ["left", "right"])
def test_collate_and_last_token_for_both_padding_sides(tok, side):
    rows = encode_classification(tok, ["a b c d", "a"], max_length=16)
    batch = collate(rows, pad_id=tok.pad_token_id, padding_side=side)
    last = last_token_index(batch["attention_mask"])
    for i, row in enumerate(rows):
        assert batch["input_ids"][i, last[i]] == row["input_ids"][-1]


def test_lora_rejects_unknown_target_modules(tmp_path):
    path = save_tiny_model(tmp_path / "m", "llama", "sequence_classification")
    model = load_model(str(path), task="sequence_classification", num_labels=2)
    with pytest.raises(ValueError, match=r"lora.target_modules: \['query'\] not found.*q_proj"):
        apply_lora(model, task="sequence_classification", r=4, alpha=8, dropout=0.0, target_modules=["query"])
    peft = apply_lora(model, task="sequence_classification", r=4, alpha=8, dropout=0.0, target_modules=["q_proj"])
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("score" in n for n in trainable)
    assert isinstance(peft(input_ids=torch.tensor([[5, 6, 7]])).logits, torch.Tensor)
