"""Tiny random models saved as real checkpoints, so the code under test loads them with from_pretrained.

They reuse the tokenizer of the packaged all-MiniLM-L6-v2 (no hub access needed); decoders get the
same 30522-token vocabulary with 64-wide, 2-layer bodies.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

from ue.models import load_tokenizer, resolve_model_path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
VOCAB = 30522
COMMON = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
          "vocab_size": VOCAB, "max_position_embeddings": 256}
FAMILIES = {
    "llama": (tf.LlamaConfig, {"num_key_value_heads": 2}),
    "qwen2": (tf.Qwen2Config, {"num_key_value_heads": 2}),
    "roberta": (tf.RobertaConfig, {}),
    "bert": (tf.BertConfig, {}),
}
AUTO = {
    "sequence_classification": tf.AutoModelForSequenceClassification,
    "token_classification": tf.AutoModelForTokenClassification,
    "causal_lm": tf.AutoModelForCausalLM,
}


def save_tiny_model(directory: Path, family: str, task: str, *, num_labels: int = 2, seed: int = 0) -> Path:
    """Write a random ``family`` model for ``task`` plus the MiniLM tokenizer into ``directory``."""
    config_cls, extra = FAMILIES[family]
    tok = load_tokenizer(MINILM)
    config = config_cls(**COMMON, **extra, num_labels=num_labels, pad_token_id=tok.pad_token_id,
                        eos_token_id=tok.eos_token_id, bos_token_id=tok.cls_token_id)
    torch.manual_seed(seed)
    model = AUTO[task].from_config(config)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def minilm_path() -> str:
    return resolve_model_path(MINILM)
