"""Maximum softmax probability (softmax response): ``U = 1 - max_c p_c``.

Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples", 2017.
"""

from __future__ import annotations

import numpy as np

from ue.heads._math import msp_np
from ue.heads.base import UncertaintyHead


class MSP(UncertaintyHead):
    """``1 - max_c softmax(logits)_c``; reads ``logits`` (n, C); higher = more uncertain."""

    name = "msp"
    requires = ("logits",)
    error_probability = True

    def __init__(self) -> None:
        pass

    def _score(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        return msp_np(cols["logits"])
