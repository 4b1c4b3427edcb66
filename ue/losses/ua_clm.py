"""UA-CLM: uncertainty-aware causal language modelling (Krishnan et al., arXiv 2412.02904).

The loss pushes the predictive entropy up where the greedy token is wrong and down where it is
right, each weighted by how confidently the model commits, so that token entropy becomes a usable
hallucination signal after fine-tuning.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ue.losses._common import LOSSES, Positions, scored_positions, zero_loss

EPS = 1e-8
ReductionScope = Literal["batch", "sequence"]
_SCOPES = ("batch", "sequence")


@LOSSES.register("ua_clm")
def ua_clm(
    logits: Tensor,
    labels: Tensor,
    /,
    *,
    reduction_scope: ReductionScope = "batch",
    shift: bool | None = None,
    **batch: Any,
) -> Tensor:
    """Uncertainty-aware causal-LM loss (arXiv 2412.02904).

    Per scored position: ``P = softmax(logits)``, ``w = argmax P``, ``conf = max P``,
    ``H = -sum_v P log P`` over the full vocabulary in nats, ``correct = (w == label)``::

        L = - mean_incorrect(conf * log(tanh(H) + eps)) - mean_correct((1 - conf) * log(1 - tanh(H) + eps))

    with ``eps = 1e-8``; each mean runs over its own positions and an empty set contributes 0.
    ``conf`` and ``H`` are *not* detached: the gradient also flows through the weights, as in the
    paper's formula. Entropy comes from ``log_softmax`` for numerical stability.

    Args:
        logits: ``(N, T, V)`` causal-LM logits, unshifted (the loss lets ``logits[:, :-1]`` predict
            ``labels[:, 1:]``); ``(N, T, C)`` with ``shift=False`` for token classification; or
            ``(N, C)`` for sequence classification.
        labels: ``(N, T)`` or ``(N,)`` class / token ids, -100 = not scored (prompt, padding).
        reduction_scope: ``"batch"`` (default) takes both means over all scored tokens of the batch;
            ``"sequence"`` takes both means within each sequence (an empty set within a sequence
            contributes 0) and then averages the per-sequence losses over sequences that have at
            least one scored token. With 2-D logits every row is its own one-token sequence.
        shift: default True for 3-D logits; see above.
        **batch: the rest of the batch, ignored.

    Returns:
        Scalar float32; 0 (still attached to the graph) when no position is scored.

    Raises:
        ValueError: unknown ``reduction_scope``, or bad shapes, dtypes or label values.
    """
    _check_scope(reduction_scope)
    pos = scored_positions(logits, labels, shift=shift)
    if pos.labels.numel() == 0:
        return zero_loss(logits)
    return _ua_clm(pos, reduction_scope)


def ua_clm_mixed(
    logits: Tensor,
    labels: Tensor,
    /,
    *,
    beta: float,
    reduction_scope: ReductionScope = "batch",
    shift: bool | None = None,
    **batch: Any,
) -> Tensor:
    """The paper's mixed objective ``CE + beta * UA_CLM`` (arXiv 2412.02904).

    Shapes, ``reduction_scope`` and ``shift`` as in :func:`ua_clm`; the positions are flattened
    once for both terms. ``beta`` usually comes from :func:`ua_clm_beta_schedule`.

    Raises:
        ValueError: ``beta`` negative or not finite, plus everything :func:`ua_clm` raises.
    """
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0; got {beta!r}")
    _check_scope(reduction_scope)
    pos = scored_positions(logits, labels, shift=shift)
    if pos.labels.numel() == 0:
        return zero_loss(logits)
    return F.cross_entropy(pos.logits, pos.labels) + beta * _ua_clm(pos, reduction_scope)


def ua_clm_beta_schedule(
    step: int, total_steps: int, *, early: float = 0.2, late: float = 0.8, switch: float = 0.2
) -> float:
    """The paper's weight of the UA-CLM term: ``early`` for the first ``switch`` fraction of the
    optimiser steps (0-based ``step``), ``late`` afterwards.

    Raises:
        ValueError: ``total_steps < 1``, ``step < 0`` or ``switch`` outside ``[0, 1]``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1; got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}")
    if not 0.0 <= switch <= 1.0:
        raise ValueError(f"switch must be a fraction of the steps in [0, 1]; got {switch}")
    return early if step < switch * total_steps else late


def _ua_clm(pos: Positions, scope: ReductionScope) -> Tensor:
    term, correct = _position_terms(pos.logits, pos.labels)
    # One bucket per (group, correct?) pair, so both means and their empty-set rule come from a
    # single scatter-add; "batch" is the special case of one group.
    num_groups = pos.num_sequences if scope == "sequence" else 1
    group = pos.sequence if scope == "sequence" else torch.zeros_like(pos.sequence)
    index = (group, correct.long())
    sums = term.new_zeros(num_groups, 2).index_put(index, term, accumulate=True)
    counts = term.new_zeros(num_groups, 2).index_put(index, torch.ones_like(term), accumulate=True)
    per_group = -(sums / counts.clamp(min=1)).sum(dim=1)
    return per_group[counts.sum(dim=1) > 0].mean()


def _position_terms(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Each position's summand before the minus sign, ``(M,)``, and whether it is correct, ``(M,)``."""
    log_p = torch.log_softmax(logits, dim=-1)
    top_log_p, pred = log_p.max(dim=-1)
    conf = top_log_p.exp()
    tanh_h = torch.tanh(-(log_p.exp() * log_p).sum(dim=-1))
    correct = pred == labels
    term = torch.where(correct, (1 - conf) * torch.log(1 - tanh_h + EPS), conf * torch.log(tanh_h + EPS))
    return term, correct


def _check_scope(scope: str) -> None:
    if scope not in _SCOPES:
        raise ValueError(f"reduction_scope must be one of {', '.join(map(repr, _SCOPES))}; got {scope!r}")
