"""Score functions shared by several heads, in NumPy (post-hoc) and torch (trained heads)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import log_softmax

CLAMP = 1e-7


def msp_np(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``1 - max_c softmax(z / T)_c``; logits (n, C) -> (n,)."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return 1.0 - np.exp(logp.max(axis=1))


def normalised_entropy_np(logits: np.ndarray) -> np.ndarray:
    """``H(softmax(z)) / log C`` in [0, 1]; logits (n, C) -> (n,)."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64), axis=1)
    return -(np.exp(logp) * logp).sum(axis=1) / math.log(logp.shape[1])


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Torch version of :func:`normalised_entropy_np`, clamped to ``[1e-7, 1 - 1e-7]`` (ALIEN's U)."""
    logp = torch.log_softmax(logits, dim=-1)
    h = -(logp.exp() * logp).sum(dim=-1) / math.log(logits.shape[-1])
    return h.clamp(CLAMP, 1 - CLAMP)


def smoothmax_score(logits: torch.Tensor, lam: float) -> torch.Tensor:
    """AdUE's ``(1 - SmoothMax(p)) / (1 - 1/C)`` with ``SmoothMax(p) = logsumexp(lam p) / lam``,
    clamped to ``[1e-7, 1 - 1e-7]``; logits (n, C) -> (n,)."""
    p = torch.softmax(logits, dim=-1)
    c = logits.shape[-1]
    smooth = torch.logsumexp(lam * p, dim=-1) / lam
    return ((1 - smooth) / (1 - 1 / c)).clamp(CLAMP, 1 - CLAMP)


def scaled_msp_np(logits: np.ndarray) -> np.ndarray:
    """AdUE's anchor ``U_sr = (1 - max_c p_c) / (1 - 1/C)``; logits (n, C) -> (n,)."""
    c = np.asarray(logits).shape[1]
    return msp_np(logits) / (1 - 1 / c)
