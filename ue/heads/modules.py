"""Copies of a fine-tuned model's own classification module (the ``g_theta`` of ALIEN and AdUE).

ALIEN and AdUE (arXiv 2505.15443) start their head as an exact copy of the module that turns the
cached ``hidden`` vector into the model's logits. Three shapes cover the common families:

- ``linear``: ``Linear(d, C)``; decoders' ``score`` (Llama, Qwen2, Mistral: no bias) and token
  classifiers (BERT/RoBERTa ``classifier``: bias, input dropout).
- ``two_layer``: dropout -> dense(d, d) -> activation -> dropout -> out_proj(d, C); RoBERTa (tanh),
  ELECTRA (gelu), DistilBERT (relu, no input dropout).
- ``bert_pooler``: BERT's pooler (dense + tanh) -> dropout -> classifier.

In every case the input is the hidden state that feeds the module (CLS position for encoders, the
last non-pad token for decoders) and the output equals the model's logits in eval mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

Kind = Literal["linear", "two_layer", "bert_pooler"]
_ACTIVATIONS = {"tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU}


@dataclass(frozen=True)
class ClassifierSpec:
    """Architecture of a classification module; saved as JSON beside its weights."""

    kind: Kind
    hidden_size: int
    num_labels: int
    bias: bool = True
    activation: str = "tanh"
    dropout: float = 0.0
    input_dropout: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "two_layer", "bert_pooler"):
            raise ValueError(f"classifier kind {self.kind!r}; known: linear, two_layer, bert_pooler")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"classifier activation {self.activation!r}; known: {', '.join(_ACTIVATIONS)}")
        if self.hidden_size < 1 or self.num_labels < 2:
            raise ValueError(f"classifier needs hidden_size >= 1 and num_labels >= 2, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Classifier(nn.Module):
    """A classification module built from a :class:`ClassifierSpec`.

    ``forward(h)``: ``h`` of shape (n, d) -> logits of shape (n, C).
    """

    def __init__(self, spec: ClassifierSpec) -> None:
        super().__init__()
        self.spec = spec
        d, c = spec.hidden_size, spec.num_labels
        self.dropout = nn.Dropout(spec.dropout)
        if spec.kind == "linear":
            self.out_proj = nn.Linear(d, c, bias=spec.bias)
        else:
            self.dense = nn.Linear(d, d)
            self.activation = _ACTIVATIONS[spec.activation]()
            self.out_proj = nn.Linear(d, c, bias=spec.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.spec.input_dropout and self.spec.kind != "bert_pooler":
            h = self.dropout(h)
        if self.spec.kind == "linear":
            return self.out_proj(h)
        return self.out_proj(self.dropout(self.activation(self.dense(h))))


def _active(module: nn.Module) -> nn.Module:
    """The trained copy inside PEFT's ``ModulesToSaveWrapper``; the module itself otherwise."""
    copies = getattr(module, "modules_to_save", None)
    if copies is None:
        return module
    active = module.active_adapter
    name = active[0] if isinstance(active, (list, tuple)) else active
    return copies[name] if name in copies else module.original_module  # noqa: SIM401 (ModuleDict has no get)


def _plain(module: nn.Module) -> nn.Module:
    """A LoRA-wrapped Linear as a plain Linear with the adapter merged in (``W + scale * B @ A``).

    A LoRA target such as ``dense`` also wraps the heads' own layers (BERT's pooler, RoBERTa's
    classifier.dense); the copy must compute what the adapted model computes."""
    base = getattr(module, "base_layer", None)
    if not isinstance(base, nn.Linear) or not hasattr(module, "get_delta_weight"):
        return module
    out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                    device=base.weight.device, dtype=base.weight.dtype)
    with torch.no_grad():
        weight = base.weight.detach().clone()
        if not module.merged:  # a merged adapter is already inside the base weight
            for name in module.active_adapters:
                if name in module.lora_A:
                    weight += module.get_delta_weight(name).to(weight.dtype)
        out.weight.copy_(weight)
        if base.bias is not None:
            out.bias.copy_(base.bias)
    return out


def _dropout_p(module: nn.Module) -> float:
    drop = getattr(module, "dropout", None)
    return float(drop.p) if isinstance(drop, nn.Dropout) else 0.0


def classifier_from_model(model: nn.Module) -> Classifier:
    """Copy the classification module of a (possibly PEFT-wrapped) HF model, weights included.

    Supports ``*ForSequenceClassification`` of Llama/Qwen2/Mistral-style decoders (``score``),
    RoBERTa/XLM-R/ELECTRA/DeBERTa-style ``classifier`` heads with ``dense``/``out_proj``, BERT
    (pooler + classifier), DistilBERT (``pre_classifier``) and ``*ForTokenClassification``.

    Raises:
        ValueError: the model has none of the known classification modules.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    named = dict(base.named_children())
    if "score" in named:
        return _copy_linear(_active(named["score"]), dropout=_dropout_p(base), input_dropout=True)
    if "pre_classifier" in named:  # DistilBERT
        return _copy_two_layer(
            _active(named["pre_classifier"]), _active(named["classifier"]), "relu",
            _dropout_p(base), input_dropout=False,
        )
    classifier = _active(named["classifier"]) if "classifier" in named else None
    if classifier is not None and hasattr(classifier, "out_proj"):
        act = "gelu" if "electra" in type(base).__name__.lower() else "tanh"
        return _copy_two_layer(classifier.dense, classifier.out_proj, act, _dropout_p(classifier))
    pooler = getattr(next(iter(named.values()), None), "pooler", None)
    if isinstance(classifier, nn.Linear) and "Token" not in type(base).__name__ and pooler is not None:
        return _copy_bert_pooler(_active(pooler).dense, classifier, _dropout_p(base))
    if isinstance(classifier, nn.Linear):
        return _copy_linear(classifier, dropout=_dropout_p(base), input_dropout=True)
    raise ValueError(
        f"cannot find the classification module of {type(base).__name__}: expected a `score` Linear "
        "(decoders), a `classifier` head (encoders) or BERT's pooler + classifier"
    )


def _copy_linear(src: nn.Linear, *, dropout: float, input_dropout: bool) -> Classifier:
    spec = ClassifierSpec(
        "linear", src.in_features, src.out_features, bias=src.bias is not None,
        dropout=dropout, input_dropout=input_dropout,
    )
    out = Classifier(spec)
    out.out_proj.load_state_dict(_plain(src).state_dict())
    return out.float()


def _copy_two_layer(
    dense: nn.Linear, out_proj: nn.Linear, activation: str, dropout: float, input_dropout: bool = True
) -> Classifier:
    spec = ClassifierSpec(
        "two_layer", dense.in_features, out_proj.out_features, bias=out_proj.bias is not None,
        activation=activation, dropout=dropout, input_dropout=input_dropout,
    )
    out = Classifier(spec)
    out.dense.load_state_dict(_plain(dense).state_dict())
    out.out_proj.load_state_dict(_plain(out_proj).state_dict())
    return out.float()


def _copy_bert_pooler(dense: nn.Linear, classifier: nn.Linear, dropout: float) -> Classifier:
    spec = ClassifierSpec(
        "bert_pooler", dense.in_features, classifier.out_features, bias=classifier.bias is not None,
        activation="tanh", dropout=dropout,
    )
    out = Classifier(spec)
    out.dense.load_state_dict(_plain(dense).state_dict())
    out.out_proj.load_state_dict(_plain(classifier).state_dict())
    return out.float()


def save_classifier(classifier: Classifier, directory: Any) -> None:
    """Write ``classifier.safetensors`` + ``classifier.json`` atomically into ``directory``."""
    from safetensors.torch import save

    from ue.artifacts import atomic_write_bytes, atomic_write_json

    tensors = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    atomic_write_bytes(f"{directory}/classifier.safetensors", save(tensors))
    atomic_write_json(f"{directory}/classifier.json", classifier.spec.to_dict())


def load_classifier(directory: Any) -> Classifier:
    """Inverse of :func:`save_classifier`."""
    from safetensors.torch import load_file

    from ue.artifacts import read_json

    spec = ClassifierSpec(**read_json(f"{directory}/classifier.json"))
    out = Classifier(spec)
    out.load_state_dict(load_file(f"{directory}/classifier.safetensors"))
    return out
