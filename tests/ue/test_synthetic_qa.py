"""The generated QA task: exact shares of its item kinds, determinism, the ambiguity rule, and the
from-scratch decoder and tokenizer loading through from_pretrained."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from ue.data import load_split
from ue.synthetic_qa import ATTRIBUTES, KINDS, TaskSpec, build_decoder, generate, write_dataset


def test_val_and_test_hold_each_kind_in_its_share():
    spec = TaskSpec(hard_share=0.3, ambiguous_share=0.2, n_val=50, n_test=300)
    splits = generate(spec)
    test = Counter(r["kind"] for r in splits["test"])
    assert test == {"easy": 150, "rare": 45, "two_hop": 45, "ambiguous": 60}
    val = Counter(r["kind"] for r in splits["validation"])
    assert val == {"easy": 24, "rare": 8, "two_hop": 8, "ambiguous": 10}  # 7.5 rounds to 8; easy takes the rest
    assert set(test) == set(KINDS)


def test_the_same_spec_gives_the_same_files_and_another_seed_other_ones(tmp_path: Path):
    write_dataset(tmp_path / "a", TaskSpec(seed=3))
    write_dataset(tmp_path / "b", TaskSpec(seed=3))
    write_dataset(tmp_path / "c", TaskSpec(seed=4))
    for split in ("train", "validation", "test"):
        a = (tmp_path / "a" / f"{split}.jsonl").read_bytes()
        assert a == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
        assert a != (tmp_path / "c" / f"{split}.jsonl").read_bytes()


def test_ambiguous_foods_are_equally_frequent_in_training_and_the_reference_is_one_of_them():
    spec = TaskSpec(ambiguity=3)
    splits = generate(spec)
    train_answers: dict[str, Counter] = {}
    for row in splits["train"]:
        train_answers.setdefault(row["question"], Counter()).update(row["answers"])
    ambiguous = [r for r in splits["test"] if r["kind"] == "ambiguous"]
    assert ambiguous
    for row in ambiguous:
        seen = train_answers[row["question"]]
        assert len(seen) == 3 and len(set(seen.values())) == 1  # three foods, each stated equally often
        assert len(row["answers"]) == 1 and row["answers"][0] in seen and row["answers"][0] in ATTRIBUTES["food"]


def test_rare_facts_are_stated_once_and_two_hop_test_questions_never_appear_in_training():
    splits = generate(TaskSpec())
    train = Counter(r["question"] for r in splits["train"])
    for row in splits["test"]:
        if row["kind"] == "two_hop":
            assert "the friend of the" in row["question"] and train[row["question"]] == 0
        if row["kind"] == "easy":
            assert train[row["question"]] == TaskSpec().repeats
    rare = [r for r in splits["train"] if r["kind"] == "rare"]
    names = {re.findall(r"the (\w+)", r["question"])[-1] for r in rare}
    assert len(names) == round(0.25 * 40)
    # one question per rare creature and attribute (in one phrasing): 4 facts each
    assert len(rare) == 4 * len(names)


@pytest.mark.parametrize("bad", [{"hard_share": 0.7, "ambiguous_share": 0.5}, {"rare_share": 1.5},
                                 {"ambiguity": 1}])
def test_a_bad_spec_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match="share|ambiguity"):
        TaskSpec(**bad)


def test_the_decoder_and_its_tokenizer_load_and_read_real_text_as_unknown_words(tmp_path: Path):
    from transformers import AutoModelForCausalLM

    from ue.models import load_tokenizer

    write_dataset(tmp_path / "data", TaskSpec(n_entities=8, n_val=8, n_test=8))
    build_decoder(tmp_path / "model", data=tmp_path / "data", seed=0, hidden_size=16, layers=1, heads=2)
    tok = load_tokenizer(str(tmp_path / "model"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.vocab_size == len(tok) and model.config.pad_token_id == tok.pad_token_id
    row = json.loads((tmp_path / "data" / "test.jsonl").read_text().splitlines()[0])
    prompt = load_split(str(tmp_path / "data"), "test", task="causal_lm")["prompt"][0].as_py()
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(tok(row["answers"][0], add_special_tokens=False)["input_ids"]) == row["answers"][0]
    real = tok("Who wrote \"Ulysses\" in 1922? — Ünïcode", add_special_tokens=False)["input_ids"]
    assert real and set(real) <= {tok.unk_token_id, tok.convert_tokens_to_ids("?")}
