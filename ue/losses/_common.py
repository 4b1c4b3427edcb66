"""The loss registry, argument checks and the shift/mask flattening that every loss shares.

Three input layouts reach a loss:

- sequence level: ``logits (N, C)``, ``labels (N,)``;
- causal LM: ``logits (N, T, V)``, ``labels (N, T)`` *unshifted* (the HF convention: ``labels`` is
  ``input_ids`` with -100 on prompt and padding); position t's logits predict label t + 1, so the
  loss drops the last logit and the first label;
- token classification: ``logits (N, T, C)``, ``labels (N, T)`` aligned, passed with ``shift=False``.

Label -100 marks a position that is not scored in every layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ue.registry import Registry

IGNORE_INDEX = -100

# Lives here rather than in __init__ so the loss modules can register without a circular import.
Loss = Callable[..., Tensor]
LOSSES: Registry[Loss] = Registry("loss")


@dataclass(frozen=True)
class Positions:
    """The scored positions of a batch, flattened.

    Attributes:
        logits: ``(M, C)`` float32, one row per scored position.
        labels: ``(M,)`` int64 in ``[0, C)``.
        sequence: ``(M,)`` int64, the batch row (sequence) each position comes from.
        num_sequences: N, the batch size.
    """

    logits: Tensor
    labels: Tensor
    sequence: Tensor
    num_sequences: int


def scored_positions(logits: Tensor, labels: Tensor, *, shift: bool | None = None) -> Positions:
    """Check ``logits``/``labels``, apply the causal shift and drop positions labelled -100.

    Args:
        logits: ``(N, C)`` or ``(N, T, C)`` floating point.
        labels: ``(N,)`` or ``(N, T)`` integer class ids, -100 = not scored.
        shift: for 3-D inputs, whether ``logits[:, :-1]`` predict ``labels[:, 1:]`` (default True,
            causal LM); pass False for token classification. Must not be True for 2-D inputs.

    Raises:
        ValueError: wrong dims, mismatched shapes, non-integer labels, labels outside ``[0, C)``
            at scored positions, or ``shift=True`` with 2-D logits.
    """
    _check_shapes(logits, labels)
    if logits.dim() == 2 and shift:
        raise ValueError(f"shift=True needs token-level logits (N, T, V); got logits {tuple(logits.shape)}")
    if logits.dim() == 3 and shift is not False:
        logits, labels = logits[:, :-1], labels[:, 1:]
    scored = labels != IGNORE_INDEX
    _check_label_range(labels, scored, logits.shape[-1])
    sequence = torch.arange(labels.shape[0], device=labels.device)
    if labels.dim() == 2:
        sequence = sequence[:, None].expand_as(labels)
    # float32 as HF's causal-LM loss does: a bf16 log-softmax over a large vocab loses the small
    # probabilities that the entropy and the smoothing term sum over.
    return Positions(logits[scored].float(), labels[scored].long(), sequence[scored], labels.shape[0])


def zero_loss(logits: Tensor) -> Tensor:
    """A scalar 0 that is still attached to the graph, for a batch with no scored position.

    A mean over zero positions would be nan and poison the optimiser state; this keeps
    ``backward()`` valid with all-zero gradients.
    """
    return logits.sum().float() * 0.0


def _check_shapes(logits: Tensor, labels: Tensor) -> None:
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor; got {_describe(logits)}")
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class ids; got {_describe(labels)}")
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (N, C) or (N, T, V); got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal logits shape without the class dim "
            f"{tuple(logits.shape[:-1])} (logits {tuple(logits.shape)})"
        )


def _check_label_range(labels: Tensor, scored: Tensor, num_classes: int) -> None:
    bad = scored & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(
            f"labels must be in [0, {num_classes}) or {IGNORE_INDEX} (ignored); "
            f"got {labels[bad][0].item()} with {num_classes} classes"
        )


def _describe(x: object) -> str:
    return f"{x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
