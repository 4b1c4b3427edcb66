"""Plain cross entropy: the fine-tuning baseline for every task."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ue.losses._common import LOSSES, scored_positions, zero_loss


@LOSSES.register("ce")
def cross_entropy(logits: Tensor, labels: Tensor, /, *, shift: bool | None = None, **batch: Any) -> Tensor:
    """Mean cross entropy over the scored positions (labels != -100).

    Args:
        logits: ``(N, C)`` sequence classification, or ``(N, T, V)`` causal LM (unshifted: the loss
            lets ``logits[:, :-1]`` predict ``labels[:, 1:]``), or ``(N, T, C)`` token
            classification with ``shift=False``.
        labels: ``(N,)`` or ``(N, T)`` class ids, -100 = not scored.
        shift: see above; default True for 3-D logits.
        **batch: the rest of the batch, ignored (the trainer passes everything).

    Returns:
        Scalar float32; 0 (still attached to the graph) when no position is scored.

    Raises:
        ValueError: bad shapes, dtypes or label values (see ``scored_positions``).
    """
    pos = scored_positions(logits, labels, shift=shift)
    if pos.labels.numel() == 0:
        return zero_loss(logits)
    return F.cross_entropy(pos.logits, pos.labels)
