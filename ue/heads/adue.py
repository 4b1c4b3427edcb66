"""AdUE, the SmoothMax head (arXiv 2505.15443 v1).

Score ``U = clamp((1 - SmoothMax(p')) / (1 - 1/C), 1e-7, 1 - 1e-7)`` with
``SmoothMax(p') = logsumexp(lambda * p') / lambda`` and ``p' = softmax(g_theta(h))``. Loss
``BCE(U, e) + alpha * mean((U - U_sr)^2) + beta * sum ||theta - theta_init||^2``, anchor
``U_sr = (1 - max_c p_c) / (1 - 1/C)`` of the frozen model.
"""

from __future__ import annotations

import numpy as np
import torch

from ue.heads._math import scaled_msp_np, smoothmax_score
from ue.heads._trained import TrainedErrorHead
from ue.heads.modules import Classifier


class AdUE(TrainedErrorHead):
    """Reads ``hidden`` (n, d) to score; fitting reads ``hidden``, ``logits``, ``label``, ``pred``.

    Higher = more uncertain; the score is trained as P(error).
    """

    name = "adue"

    def __init__(
        self,
        *,
        classifier: Classifier | None = None,
        alpha: float = 0.1,
        beta: float = 0.1,
        lr: float = 1e-4,
        epochs: int = 10,
        batch_size: int = 128,
        seed: int = 0,
        init: str = "copy",
        smoothmax_lambda: float = 100.0,
        patience: int | None = None,
    ) -> None:
        self.classifier = classifier
        self.alpha = alpha
        self.beta = beta
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.init = init
        self.smoothmax_lambda = smoothmax_lambda
        self.patience = patience

    def _score_t(self, logits: torch.Tensor) -> torch.Tensor:
        return smoothmax_score(logits, self.smoothmax_lambda)

    def _anchor(self, logits: np.ndarray) -> np.ndarray:
        return scaled_msp_np(logits)
