"""ALIEN, Aligned Entropy (arXiv 2505.15443 v2).

Score ``U = clamp(H(p') / log C, 1e-7, 1 - 1e-7)`` with ``p' = softmax(g_theta(h))`` and ``g_theta``
a trained copy of the model's classification module. Loss ``BCE(U, e) + alpha * mean((U - U_ent)^2)
+ beta * sum ||theta - theta_init||^2``, anchor ``U_ent = H(p) / log C`` of the frozen model. At
``theta = theta_init`` in eval mode, U equals the model's normalised entropy.

Defaults follow the authors' recipe (up to 50 epochs, early stopping on val ROC-AUC with patience 5)
at lr 4e-4, the largest of their grid. At their grid's lr 1e-4 for 20 epochs, a 4,000-row fit takes
~640 small steps and hardly leaves the anchor: on the MiniLM SST-2 demo it matched entropy
(ROC-AUC 80.06 vs 80.09) with ECE 32.7, because ``1 - U`` of a normalised entropy is not a probability
of being right (p = 0.9 gives 1 - U = 0.53). ``U`` is trained toward P(error), but only the
post-hoc calibration (``ue.heads.Calibrated``) makes it one; the study in docs/results.md measures both.
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
        lr: float = 4e-4,
        epochs: int = 50,
        batch_size: int = 128,
        seed: int = 0,
        init: str = "copy",
        patience: int | None = 5,
    ) -> None:
        self.classifier = classifier
        self.alpha = alpha
        self.beta = beta
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.init = init
        self.patience = patience

    def _score_t(self, logits: torch.Tensor) -> torch.Tensor:
        return normalised_entropy(logits)

    def _anchor(self, logits: np.ndarray) -> np.ndarray:
        return normalised_entropy_np(logits)
