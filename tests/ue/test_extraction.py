"""ue.extraction: the cached ``hidden`` is the classification module's input, whatever the family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.tiny import save_tiny_model
from ue.extraction import classify_batch, confidence_logits, generate_answers, length_batches, rouge_l
from ue.heads.modules import classifier_from_model
from ue.models import apply_lora, load_model, load_tokenizer
from ue.tokenize import collate, encode_causal, encode_classification, encode_tokens

TEXTS = ["a gorgeous film", "dull", "it is neither funny nor moving , and far too long for its own good", "fine ."]
WORDS = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["BRUSSELS", "1996-08-22"]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny random checkpoints, built once: name -> (model, tokenizer)."""
    root = tmp_path_factory.mktemp("tiny")
    specs = {
        "bert": ("bert", "sequence_classification", 2), "roberta": ("roberta", "sequence_classification", 3),
        "llama": ("llama", "sequence_classification", 2), "qwen2": ("qwen2", "sequence_classification", 2),
        "bert_ner": ("bert", "token_classification", 5), "roberta_ner": ("roberta", "token_classification", 5),
        "llama_lm": ("llama", "causal_lm", 2),
    }
    out = {}
    for name, (family, task, labels) in specs.items():
        path = save_tiny_model(root / name, family, task, num_labels=labels)
        tok = load_tokenizer(str(path))
        out[name] = (load_model(str(path), task=task, num_labels=None if task == "causal_lm" else labels,
                                pad_token_id=tok.pad_token_id).eval(), tok)
    return out


def _batch(tok, side: str, texts=TEXTS):
    return collate(encode_classification(tok, texts, max_length=32), pad_id=tok.pad_token_id, padding_side=side)


@pytest.mark.parametrize("name,side", [("bert", "right"), ("roberta", "right"), ("llama", "left"),
                                       ("llama", "right"), ("qwen2", "left"), ("qwen2", "right")])
def test_the_copied_classifier_maps_hidden_to_the_models_logits(tiny, name, side):
    model, tok = tiny[name]
    batch = _batch(tok, side)
    out = classify_batch(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    clf = classifier_from_model(model).eval()
    with torch.no_grad():
        again = clf(torch.from_numpy(out.hidden)).numpy()
    assert out.hidden.dtype == np.float32 and out.hidden.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(again, out.logits, atol=1e-5)
    np.testing.assert_array_equal(out.pred, out.logits.argmax(1))
    assert out.row is None


@pytest.mark.parametrize("name,side", [("bert", "right"), ("llama", "left"), ("llama", "right"), ("qwen2", "left")])
def test_features_of_a_padded_batch_equal_those_of_each_row_alone(tiny, name, side):
    model, tok = tiny[name]
    batch = _batch(tok, side)
    together = classify_batch(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for i, text in enumerate(TEXTS):
        alone = _batch(tok, side, [text])
        one = classify_batch(model, input_ids=alone["input_ids"], attention_mask=alone["attention_mask"])
        np.testing.assert_allclose(together.hidden[i], one.hidden[0], atol=1e-4)
        np.testing.assert_allclose(together.logits[i], one.logits[0], atol=1e-4)


def test_decoder_logits_are_those_of_hf_for_right_padding(tiny):
    model, tok = tiny["llama"]
    batch = _batch(tok, "right")
    out = classify_batch(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        hf = model(**batch).logits.numpy()
    np.testing.assert_allclose(out.logits, hf, atol=1e-6)


def test_a_peft_wrapped_model_gives_the_same_features_as_its_merged_copy(tiny):
    model, tok = tiny["bert"]
    import copy

    peft_model = apply_lora(copy.deepcopy(model), task="sequence_classification", r=2, alpha=4, dropout=0.0,
                            target_modules=["query", "value"]).eval()
    batch = _batch(tok, "right")
    wrapped = classify_batch(peft_model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    merged = classify_batch(peft_model.merge_and_unload().eval(), input_ids=batch["input_ids"],
                            attention_mask=batch["attention_mask"])
    np.testing.assert_allclose(wrapped.hidden, merged.hidden, atol=1e-5)
    np.testing.assert_allclose(wrapped.logits, merged.logits, atol=1e-5)


@pytest.mark.parametrize("name", ["bert_ner", "roberta_ner"])
def test_token_classification_gives_one_row_per_word_start(tiny, name):
    model, tok = tiny[name]
    encoded = encode_tokens(tok, WORDS, max_length=32)
    batch = collate(encoded, pad_id=tok.pad_token_id)
    starts = [r["word_starts"] for r in encoded]
    out = classify_batch(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         word_starts=starts)
    assert len(out.pred) == sum(map(len, WORDS)) == sum(map(len, starts))
    np.testing.assert_array_equal(out.row, [0, 0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(out.position, [p for s in starts for p in s])
    with torch.no_grad():
        full = model(**batch).logits.numpy()
        again = classifier_from_model(model).eval()(torch.from_numpy(out.hidden)).numpy()
    np.testing.assert_allclose(out.logits, full[out.row, out.position], atol=1e-6)
    np.testing.assert_allclose(again, out.logits, atol=1e-5)


def test_a_token_classifier_without_word_starts_is_refused(tiny):
    model, tok = tiny["bert_ner"]
    batch = collate(encode_tokens(tok, WORDS, max_length=32), pad_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="word_starts"):
        classify_batch(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_generated_answers_carry_entropy_perplexity_and_the_last_prompt_state(tiny):
    model, tok = tiny["llama_lm"]
    prompts = ["Question: who?\nAnswer:", "Context: a b c d e f\nQuestion: where is it?\nAnswer:"]
    batch = collate(encode_causal(tok, prompts, max_length=48), pad_id=tok.pad_token_id, padding_side="left")
    gen = generate_answers(model, tok, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           max_new_tokens=5, stop_strings=())
    assert len(gen.texts) == 2 and gen.hidden.shape == (2, 64)
    for i, prompt_ids in enumerate(r["input_ids"] for r in encode_causal(tok, prompts, max_length=48)):
        # Teacher-force the answer through the model alone (no padding) and recompute the statistics.
        k = int(gen.num_tokens[i])
        assert 1 <= k <= 5
        answer = _greedy(model, prompt_ids, k)
        with torch.no_grad():
            out = model(torch.tensor([prompt_ids + answer]), output_hidden_states=True)
        logp = torch.log_softmax(out.logits[0, len(prompt_ids) - 1 : -1].double(), -1)
        entropy = float(-(logp.exp() * logp).sum(-1).mean())
        ppl = math.exp(float(-logp[torch.arange(k), torch.tensor(answer)].mean()))
        assert gen.token_entropy_mean[i] == pytest.approx(entropy, rel=1e-4)
        assert gen.perplexity[i] == pytest.approx(ppl, rel=1e-4)
        np.testing.assert_allclose(gen.hidden[i], out.hidden_states[-1][0, len(prompt_ids) - 1].numpy(), atol=1e-4)


def _greedy(model, prompt_ids: list[int], k: int) -> list[int]:
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(k):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids):]


def test_generation_refuses_right_padded_prompts(tiny):
    model, tok = tiny["llama_lm"]
    batch = collate(encode_causal(tok, ["a b c", "a"], max_length=16), pad_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="left-padded"):
        generate_answers(model, tok, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         max_new_tokens=2)


def test_rouge_l_takes_the_best_reference():
    # LCS("the cat", "the cat sat") = 2: precision 1, recall 2/3, F = 0.8.
    assert rouge_l("the cat", ["the cat sat"]) == pytest.approx(0.8)
    assert rouge_l("the cat", ["a dog", "the cat sat", "cat"]) == pytest.approx(0.8)
    assert rouge_l("France", ["France", "france"]) == pytest.approx(1.0)
    assert rouge_l("anything", []) == 0.0


def test_confidence_logits_put_one_over_perplexity_on_the_right_class():
    ppl = np.array([1.0, 2.0, 10.0, 1e9])
    logits = confidence_logits(ppl)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(p[:, 1], np.clip(1 / ppl, 1e-6, 1 - 1e-6), rtol=1e-5)
    assert logits.dtype == np.float32 and logits.shape == (4, 2)


def test_length_batches_sort_by_length_and_cover_every_row_once():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = length_batches(lengths, batch_size=3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(lengths, batch_size=0)


def test_an_answer_ends_at_a_stop_string(tiny):
    model, tok = tiny["llama_lm"]
    batch = collate(encode_causal(tok, ["Question: who?\nAnswer:"], max_length=48), pad_id=tok.pad_token_id,
                    padding_side="left")
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "max_new_tokens": 4}
    free = generate_answers(model, tok, stop_strings=(), **kwargs)
    first_word = free.texts[0].split()[0]
    stopped = generate_answers(model, tok, stop_strings=(first_word,), **kwargs)
    assert free.num_tokens[0] == 4
    assert stopped.num_tokens[0] < 4 and stopped.texts[0] == ""
