"""ALIEN, Aligned Entropy (arXiv 2505.15443 v2).

Score ``U = clamp(H(p') / log C, 1e-7, 1 - 1e-7)`` with ``p' = softmax(g_theta(h))`` and ``g_theta``
a trained copy of the model's classification module. Loss ``BCE(U, e) + alpha * mean((U - U_ent)^2)
+ beta * sum ||theta - theta_init||^2``, anchor ``U_ent = H(p) / log C`` of the frozen model. At
``theta = theta_init`` in eval mode, U equals the model's normalised entropy.
"""

from __future__ import annotations

import numpy as np
import torch

from ue.heads._math import normalised_entropy, normalised_entropy_np
from ue.heads._trained import TrainedErrorHead
from ue.heads.modules import Classifier


class Alien(TrainedErrorHead):
    """Reads ``hidden`` (n, d) to score; fitting reads ``hidden``, ``logits``, ``label``, ``pred``.

    Higher = more uncertain; the score is trained as P(error).
    """

    name = "alien"

    def __init__(
        self,
        *,
        classifier: Classifier | None = None,
        alpha: float = 0.1,
        beta: float = 0.1,
        lr: float = 1e-4,
        epochs: int = 20,
        batch_size: int = 128,
        seed: int = 0,
        init: str = "copy",
    ) -> None:
        self.classifier = classifier
        self.alpha = alpha
        self.beta = beta
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.init = init

    def _score_t(self, logits: torch.Tensor) -> torch.Tensor:
        return normalised_entropy(logits)

    def _anchor(self, logits: np.ndarray) -> np.ndarray:
        return normalised_entropy_np(logits)
