"""From a tokenised batch to the cached features: prediction, logits and the classifier's input.

``hidden`` is exactly the tensor that feeds the model's classification module (METHODS.md, "Trained
heads"), so a copy of that module (``ue.heads.modules.classifier_from_model``) maps it back to the
model's logits. It is captured with a forward hook on the module, which works the same for plain and
PEFT-wrapped models and costs no extra forward pass:

- decoders (``score``): the final hidden state of the last non-pad token, for left or right padding;
- encoders: the final hidden state at the CLS position (RoBERTa/ELECTRA ``classifier``, BERT pooler),
  or the already pooled vector (DistilBERT ``pre_classifier``);
- token classification: the final hidden state at each word's first sub-token.

Causal LM QA rows go through :func:`generate_answers` (greedy answer, mean token entropy, perplexity,
the last prompt token's hidden state) and :func:`rouge_l` (correctness against the reference).
Shared by the extraction job and the scoring job.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ue.tokenize import last_token_index


@dataclass(frozen=True)
class BatchFeatures:
    """Features of one batch. For token classification, one row per word start and ``row`` /
    ``position`` say which input row and token position each came from; else both are None."""

    pred: np.ndarray
    """(n,) int64: argmax of the logits, the model's own prediction."""
    logits: np.ndarray
    """(n, C) float32."""
    hidden: np.ndarray
    """(n, d) float32: the input of the classification module."""
    row: np.ndarray | None = None
    position: np.ndarray | None = None


def _classification_tap(model: nn.Module) -> tuple[nn.Module, bool]:
    """The module whose input is ``hidden`` and whether it scores every position (decoders' ``score``).

    Mirrors ``classifier_from_model``, so the copied module applied to ``hidden`` gives the logits.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    named = dict(base.named_children())
    if "score" in named:
        return named["score"], True
    if "pre_classifier" in named:  # DistilBERT pools before its pre_classifier
        return named["pre_classifier"], False
    classifier = named.get("classifier")
    if classifier is None:
        raise ValueError(
            f"{type(base).__name__} has no classification module (`score` or `classifier`); "
            "feature extraction needs a *ForSequenceClassification or *ForTokenClassification model"
        )
    inner = getattr(classifier, "original_module", classifier)  # PEFT's ModulesToSaveWrapper
    pooler = getattr(next(iter(named.values())), "pooler", None)
    if isinstance(inner, nn.Linear) and "Token" not in type(base).__name__ and pooler is not None:
        return pooler, False  # BERT: the copied module starts with the pooler's dense layer
    return classifier, False


@torch.inference_mode()
def classify_batch(
    model: nn.Module,
    *,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    word_starts: Sequence[Sequence[int]] | None = None,
) -> BatchFeatures:
    """Run a sequence- or token-classification model on one padded batch and return its features.

    Args:
        model: a ``*ForSequenceClassification`` / ``*ForTokenClassification`` model, plain or
            PEFT-wrapped, in eval mode.
        input_ids, attention_mask: (n, L) tensors, left or right padded.
        word_starts: token classification only: per row, the positions of the words' first
            sub-tokens (``ue.tokenize.encode_tokens``); one output row per position.

    Returns:
        :class:`BatchFeatures` on the CPU; float32 whatever the model's dtype.

    Raises:
        ValueError: the model has no classification module, or a token classifier got no
            ``word_starts``.
    """
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    module, every_position = _classification_tap(model)
    seen: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.setdefault("input", args[0])
        seen.setdefault("output", output)

    handle = module.register_forward_hook(hook)
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        handle.remove()
    hidden = seen["input"]
    if logits.dim() == 3:  # token classification: (n, L, C)
        if word_starts is None:
            raise ValueError("a token-classification model needs word_starts (ue.tokenize.encode_tokens)")
        row = torch.tensor([i for i, starts in enumerate(word_starts) for _ in starts], dtype=torch.long)
        position = torch.tensor([p for starts in word_starts for p in starts], dtype=torch.long)
        r, p = row.to(device), position.to(device)
        return _features(logits[r, p], hidden[r, p], row=row.numpy(), position=position.numpy())
    if every_position:  # decoders score every position; keep the last real token (left or right pad)
        rows = torch.arange(len(input_ids), device=device)
        last = last_token_index(attention_mask)
        return _features(seen["output"][rows, last], hidden[rows, last])
    return _features(logits, hidden[:, 0] if hidden.dim() == 3 else hidden)


def _features(logits: torch.Tensor, hidden: torch.Tensor, **index: np.ndarray) -> BatchFeatures:
    logits = logits.float().cpu()
    return BatchFeatures(
        pred=logits.argmax(dim=-1).numpy().astype(np.int64),
        logits=logits.numpy(),
        hidden=hidden.float().cpu().numpy(),
        **index,
    )


@dataclass(frozen=True)
class Generation:
    """Greedy answers to a batch of prompts and the UA-CLM uncertainty statistics (arXiv 2412.02904)."""

    texts: list[str]
    """The decoded answers, cut at the first stop string, stripped."""
    token_entropy_mean: np.ndarray
    """(n,) float64: mean over answer tokens of the entropy of the next-token distribution, in nats."""
    perplexity: np.ndarray
    """(n,) float64: ``exp(mean_t -log p(token_t))`` over the answer tokens."""
    num_tokens: np.ndarray
    """(n,) int64: answer tokens counted in the statistics (up to and including EOS or the stop token)."""
    hidden: np.ndarray
    """(n, d) float32: final hidden state of the last prompt token, the input of ``lm_head`` for the
    answer's first token."""


@torch.inference_mode()
def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    *,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    stop_strings: Sequence[str] = ("\n",),
) -> Generation:
    """Greedy-decode answers for left-padded prompts (n, L) and measure how unsure the model was.

    An answer ends at EOS, at a token that completes one of ``stop_strings`` or after
    ``max_new_tokens``; the statistics cover its tokens including that last one.

    Raises:
        ValueError: the prompts are not left-padded (generation would continue after padding).
    """
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("generate_answers needs left-padded prompts: collate(..., padding_side='left')")
    device = next(model.parameters()).device
    # Stop early only on strings the tokenizer can produce (BERT-style vocabularies drop "\n").
    stoppable = [s for s in stop_strings if tokenizer(s, add_special_tokens=False)["input_ids"]]
    lm_head = model.get_output_embeddings()
    seen: list[torch.Tensor] = []
    handle = lm_head.register_forward_hook(lambda _m, args, _out: seen.append(args[0]) if not seen else None)
    try:
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            stop_strings=stoppable or None, tokenizer=tokenizer,
        )
    finally:
        handle.remove()
    tokens = out.sequences[:, input_ids.shape[1]:].cpu()  # (n, T)
    logp = torch.log_softmax(torch.stack(out.logits, dim=1).float().cpu(), dim=-1)  # (n, T, V)
    entropy = -(logp.exp() * logp).sum(-1)
    nll = -logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    length = _answer_lengths(tokens, tokenizer, stop_strings)
    mask = torch.arange(tokens.shape[1])[None, :] < length[:, None]
    count = mask.sum(1).clamp(min=1)
    texts = [_answer_text(tokenizer, t[:k], stop_strings) for t, k in zip(tokens, length.tolist(), strict=True)]
    return Generation(
        texts=texts,
        token_entropy_mean=((entropy * mask).sum(1) / count).double().numpy(),
        perplexity=torch.exp((nll * mask).sum(1) / count).double().numpy(),
        num_tokens=length.numpy().astype(np.int64),
        hidden=seen[0][:, -1].float().cpu().numpy(),
    )


def _answer_lengths(tokens: torch.Tensor, tokenizer: Any, stop_strings: Sequence[str]) -> torch.Tensor:
    """Tokens per row up to and including the first EOS or stop-string token, (n,)."""
    lengths = []
    for row in tokens.tolist():
        end = len(row)
        for t, tok in enumerate(row):
            stopped = bool(stop_strings) and any(s in tokenizer.decode(row[: t + 1]) for s in stop_strings)
            if tok == tokenizer.eos_token_id or stopped:
                end = t + 1
                break
        lengths.append(end)
    return torch.tensor(lengths, dtype=torch.long)


def _answer_text(tokenizer: Any, tokens: torch.Tensor, stop_strings: Sequence[str]) -> str:
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    for stop in stop_strings:
        text = text.split(stop, 1)[0]
    return text.strip()


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure of ``prediction`` against the best-matching reference (0 when there is none)."""
    scorer = _rouge_scorer()
    return max((scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references if ref), default=0.0)


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"])


def confidence_logits(perplexity: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Two-column logits ``[log(1 - q), log q]`` with ``q = 1 / perplexity`` (the geometric-mean
    probability of the answer's tokens), so ``softmax`` gives (P(wrong), P(right)) as the model
    itself would put them. (n,) -> (n, 2) float32."""
    q = np.clip(1.0 / np.asarray(perplexity, dtype=np.float64), eps, 1 - eps)
    return np.stack([np.log1p(-q), np.log(q)], axis=1).astype(np.float32)


def length_batches(lengths: Sequence[int], *, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length (sorted, then cut every ``batch_size``),
    so padding is not wasted. The order inside a batch is by length; callers scatter results back."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
