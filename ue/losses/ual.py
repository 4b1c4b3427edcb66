"""UAL: uncertainty-aware learning through per-sample label smoothing (arXiv 2406.04854)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ue.losses._common import LOSSES, scored_positions, zero_loss


@LOSSES.register("ual")
def ual(
    logits: Tensor,
    labels: Tensor,
    /,
    *,
    eps_min: float = 0.0,
    eps_max: float = 0.1,
    shift: bool | None = None,
    **batch: Any,
) -> Tensor:
    """Label-smoothed cross entropy whose smoothing grows with the sample's uncertainty (arXiv 2406.04854).

    Sample i gets ``eps_i = eps_min + (eps_max - eps_min) * u_i``, with ``u_i`` in ``[0, 1]`` its
    uncertainty elicited from a more capable model (``batch["uncertainty"]``). Each scored position
    of sample i contributes ``(1 - eps_i) * NLL + eps_i * mean_c(-log p_c)``, the definition of
    ``F.cross_entropy(..., label_smoothing=eps_i)``; the loss is the mean over scored positions, so
    a constant eps reproduces torch's label smoothing and ``eps = 0`` plain cross entropy.

    Args:
        logits: ``(N, C)``; ``(N, T, V)`` causal LM, unshifted (the loss lets ``logits[:, :-1]``
            predict ``labels[:, 1:]``); or ``(N, T, C)`` token classification with ``shift=False``.
        labels: ``(N,)`` or ``(N, T)`` class / token ids, -100 = not scored.
        eps_min: smoothing for ``u = 0`` (default 0.0: a certain sample keeps its hard target).
        eps_max: smoothing for ``u = 1`` (default 0.1, the usual constant label smoothing).
        shift: default True for 3-D logits; see above.
        **batch: ``uncertainty``, ``(N,)`` in ``[0, 1]``, one value per sequence (applied to all of
            its tokens); optional only when ``eps_min == eps_max``. Other keys are ignored.

    Returns:
        Scalar float32; 0 (still attached to the graph) when no position is scored.

    Raises:
        ValueError: eps outside ``0 <= eps_min <= eps_max <= 1``; ``uncertainty`` missing while
            ``eps_min != eps_max``, of the wrong shape or outside ``[0, 1]``; bad logits/labels.
    """
    if not 0.0 <= eps_min <= eps_max <= 1.0:
        raise ValueError(f"need 0 <= eps_min <= eps_max <= 1; got eps_min={eps_min}, eps_max={eps_max}")
    pos = scored_positions(logits, labels, shift=shift)
    eps = _sample_eps(batch.get("uncertainty"), pos.num_sequences, eps_min, eps_max, pos.logits.device)
    if pos.labels.numel() == 0:
        return zero_loss(logits)
    log_p = torch.log_softmax(pos.logits, dim=-1)
    nll = -log_p.gather(1, pos.labels[:, None]).squeeze(1)
    eps = eps[pos.sequence]
    return ((1 - eps) * nll - eps * log_p.mean(dim=-1)).mean()


def _sample_eps(uncertainty: Any, n: int, eps_min: float, eps_max: float, device: torch.device) -> Tensor:
    """``(N,)`` float32 smoothing per sample from the batch's ``uncertainty`` column."""
    if uncertainty is None:
        if eps_min != eps_max:
            raise ValueError(
                f"ual with eps_min={eps_min} != eps_max={eps_max} needs an `uncertainty` column in [0, 1] "
                "in the data (one value per row); add it, or set eps_min == eps_max for constant smoothing"
            )
        return torch.full((n,), eps_min, device=device)
    u = torch.as_tensor(uncertainty, dtype=torch.float32, device=device)
    if u.shape != (n,):
        raise ValueError(f"uncertainty must have shape ({n},), one value per sequence; got {tuple(u.shape)}")
    # Written so that nan fails too.
    if not ((u >= 0) & (u <= 1)).all():
        raise ValueError(
            f"uncertainty must lie in [0, 1]; got values in [{u.min().item()}, {u.max().item()}]"
        )
    return eps_min + (eps_max - eps_min) * u
