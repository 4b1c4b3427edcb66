"""Mahalanobis distance to the nearest class centroid (MD).

Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", NeurIPS 2018: class centroids ``mu_c`` and one shared covariance ``S`` fitted on the
*train* features, ``U(h) = min_c (h - mu_c)^T S^+ (h - mu_c)``; higher = more uncertain.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ue.heads._gaussian import class_means, l2_normalise, squared_distances, whitener
from ue.heads.base import UncertaintyHead


class Mahalanobis(UncertaintyHead):
    """Reads ``hidden`` (n, d); fitting also reads ``label``.

    Args:
        normalize: L2-normalise features before fitting and scoring.
        shrinkage: weight in [0, 1] of ``tr(S)/d * I`` mixed into the covariance.
        rtol: eigenvalues below ``rtol * max eigenvalue`` are treated as zero (pseudo-inverse).
    """

    name = "mahalanobis"
    requires = ("hidden",)
    fit_requires = ("hidden", "label")

    def __init__(self, *, normalize: bool = False, shrinkage: float = 0.0, rtol: float = 1e-6) -> None:
        self.normalize = normalize
        self.shrinkage = shrinkage
        self.rtol = rtol

    def _prepare(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h, dtype=np.float64)
        return l2_normalise(h) if self.normalize else h

    def _check_params(self) -> None:
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ValueError(f"{self.name}: shrinkage must be in [0, 1], got {self.shrinkage}")
        if not 0.0 < self.rtol < 1.0:
            raise ValueError(f"{self.name}: rtol must be in (0, 1), got {self.rtol}")

    def fit(self, features: Any, val: Any = None) -> Mahalanobis:
        self._check_params()
        cols = self._fit_columns(features, split="train")
        h, labels = self._prepare(cols["hidden"]), np.asarray(cols["label"])
        if len(h) < 2:
            raise ValueError(f"{self.name}: needs at least 2 training rows, got {len(h)}")
        self._fit_gaussians(h, labels)
        return self

    def _fit_gaussians(self, h: np.ndarray, labels: np.ndarray) -> None:
        """Class centroids and the shared covariance from prepared features h (n, d)."""
        self.classes_, means = class_means(h, labels)
        centred = h - means[np.searchsorted(self.classes_, labels)]
        w = whitener(centred, shrinkage=self.shrinkage, rtol=self.rtol)
        self.whitener_ = w.astype(np.float32)
        self.centres_ = (means @ w).astype(np.float32)

    def class_distances(self, h: np.ndarray) -> np.ndarray:
        """Squared distances (n, C) of raw hidden states to every class centroid."""
        z = self._prepare(h).astype(np.float32) @ self.whitener_
        return squared_distances(z, self.centres_)

    def _score(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        return self.class_distances(cols["hidden"]).min(axis=1)

    def _is_fitted(self) -> bool:
        return hasattr(self, "whitener_")

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "whitener": torch.from_numpy(self.whitener_),
            "centres": torch.from_numpy(self.centres_),
            "classes": torch.from_numpy(np.asarray(self.classes_, dtype=np.int64)),
        }

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.whitener_ = tensors["whitener"].numpy()
        self.centres_ = tensors["centres"].numpy()
        self.classes_ = tensors["classes"].numpy()
