"""Relative Mahalanobis distance (RMD).

Ren et al., "A Simple Fix to Mahalanobis Distance for Improving Near-OOD Detection", 2021:
``U(h) = min_c MD_c(h) - MD_0(h)`` where ``MD_0`` uses the global mean and covariance of the train
features (a background Gaussian); higher = more uncertain.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ue.heads._gaussian import squared_distances, whitener
from ue.heads.mahalanobis import Mahalanobis


class RelativeMahalanobis(Mahalanobis):
    """Reads ``hidden`` (n, d); fitting also reads ``label``. Parameters as :class:`Mahalanobis`."""

    name = "relative_mahalanobis"

    def _fit_gaussians(self, h: np.ndarray, labels: np.ndarray) -> None:
        super()._fit_gaussians(h, labels)
        mean = h.mean(axis=0)
        w0 = whitener(h - mean, shrinkage=self.shrinkage, rtol=self.rtol)
        self.background_whitener_ = w0.astype(np.float32)
        self.background_centre_ = (mean[None, :] @ w0).astype(np.float32)

    def _score(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        h = cols["hidden"]
        z0 = self._prepare(h).astype(np.float32) @ self.background_whitener_
        md0 = squared_distances(z0, self.background_centre_)[:, 0]
        return self.class_distances(h).min(axis=1) - md0

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            **super()._state_tensors(),
            "background_whitener": torch.from_numpy(self.background_whitener_),
            "background_centre": torch.from_numpy(self.background_centre_),
        }

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        super()._restore(tensors, meta)
        self.background_whitener_ = tensors["background_whitener"].numpy()
        self.background_centre_ = tensors["background_centre"].numpy()
