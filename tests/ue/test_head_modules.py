"""The copied classification module reproduces each model family's logits from the cached input."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from peft import LoraConfig, get_peft_model

from ue.heads.modules import Classifier, classifier_from_model, load_classifier, save_classifier

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "vocab_size": 128, "max_position_embeddings": 64, "num_labels": 3, "num_key_value_heads": 2}


def _hidden_and_logits(model, ids):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


CASES = {
    "llama": (tf.LlamaConfig, tf.LlamaForSequenceClassification, "last", "linear"),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForSequenceClassification, "last", "linear"),
    "roberta": (tf.RobertaConfig, tf.RobertaForSequenceClassification, "cls", "two_layer"),
    "electra": (tf.ElectraConfig, tf.ElectraForSequenceClassification, "cls", "two_layer"),
    "bert": (tf.BertConfig, tf.BertForSequenceClassification, "cls", "bert_pooler"),
    "distilbert": (tf.DistilBertConfig, tf.DistilBertForSequenceClassification, "cls", "two_layer"),
}


@pytest.mark.parametrize("family", CASES)
def test_copy_reproduces_model_logits(family, tmp_path):
    config_cls, model_cls, position, kind = CASES[family]
    torch.manual_seed(0)
    kwargs = dict(TINY, pad_token_id=0)
    if family == "distilbert":
        kwargs.update(dim=32, n_layers=2, n_heads=4, hidden_dim=64)
    model = model_cls(config_cls(**kwargs))
    ids = torch.randint(1, 128, (4, 7))
    hidden, logits = _hidden_and_logits(model, ids)
    h = hidden[:, -1] if position == "last" else hidden[:, 0]
    clf = classifier_from_model(model).eval()
    assert clf.spec.kind == kind
    torch.testing.assert_close(clf(h), logits, atol=1e-5, rtol=1e-5)
    save_classifier(clf, tmp_path)
    torch.testing.assert_close(load_classifier(tmp_path).eval()(h), logits, atol=1e-5, rtol=1e-5)


def test_copy_from_peft_model_takes_the_trained_classifier():
    torch.manual_seed(0)
    model = tf.LlamaForSequenceClassification(tf.LlamaConfig(**TINY, pad_token_id=0))
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["score"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "modules_to_save" in name:
                p.add_(1.0)  # the trained copy now differs from the original
    ids = torch.randint(1, 128, (3, 5))
    hidden, logits = _hidden_and_logits(peft, ids)
    clf = classifier_from_model(peft).eval()
    torch.testing.assert_close(clf(hidden[:, -1]), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_copy_merges_lora_on_the_heads_own_layers(family):
    """target_modules [dense] also adapts BERT's pooler.dense and RoBERTa's classifier.dense."""
    config_cls, model_cls, _, _ = CASES[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**TINY, pad_token_id=0))
    peft = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "dense"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # trained adapters: B is no longer zero
    ids = torch.randint(1, 128, (3, 5))
    hidden, logits = _hidden_and_logits(peft, ids)
    clf = classifier_from_model(peft).eval()
    torch.testing.assert_close(clf(hidden[:, 0]), logits, atol=1e-5, rtol=1e-5)


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="cannot find the classification module"):
        classifier_from_model(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert isinstance(classifier_from_model(tf.BertForTokenClassification(tf.BertConfig(**TINY))), Classifier)
