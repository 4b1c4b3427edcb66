"""Normalised predictive entropy: ``U = H(p) / log C`` in [0, 1].

Shannon entropy of the frozen model's softmax, divided by its maximum; the anchor of ALIEN
(arXiv 2505.15443).
"""

from __future__ import annotations

import numpy as np

from ue.heads._math import normalised_entropy_np
from ue.heads.base import UncertaintyHead


class Entropy(UncertaintyHead):
    """``H(softmax(logits)) / log C``; reads ``logits`` (n, C); higher = more uncertain."""

    name = "entropy"
    requires = ("logits",)

    def __init__(self) -> None:
        pass

    def _score(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        return normalised_entropy_np(cols["logits"])
