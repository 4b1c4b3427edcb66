"""Gaussian fitting shared by the Mahalanobis heads.

The (pseudo-)inverse covariance is stored as a whitening matrix ``W`` (d, k) with
``S^+ = W W^T``: eigenvalues below ``rtol * max`` are dropped, so a singular covariance (d > n,
duplicated features) gives the pseudo-inverse instead of a crash, and optional shrinkage towards
``tr(S)/d * I`` keeps every direction when asked.
"""

from __future__ import annotations

import numpy as np


def l2_normalise(h: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(h, axis=1, keepdims=True)
    return h / np.maximum(norm, 1e-12)


def whitener(centred: np.ndarray, *, shrinkage: float, rtol: float) -> np.ndarray:
    """``W`` (d, k) with ``W W^T = pinv((1 - s) S + s tr(S)/d I)``, ``S = centred^T centred / n``."""
    x = np.asarray(centred, dtype=np.float64)
    cov = x.T @ x / max(len(x), 1)
    if shrinkage > 0:
        cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    eigval, eigvec = np.linalg.eigh(cov)
    keep = eigval > rtol * max(float(eigval.max()), np.finfo(np.float64).tiny)
    return eigvec[:, keep] / np.sqrt(eigval[keep])


def squared_distances(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``||z_i - m_c||^2`` for whitened rows z (n, k) and centres (C, k) -> (n, C), never negative."""
    z = z.astype(np.float64, copy=False)
    m = centres.astype(np.float64, copy=False)
    d = (z * z).sum(1, keepdims=True) - 2.0 * z @ m.T + (m * m).sum(1)[None, :]
    return np.maximum(d, 0.0)


def class_means(h: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted class ids present in ``labels`` and their means (C, d) in float64."""
    classes = np.unique(labels)
    means = np.stack([h[labels == c].mean(axis=0, dtype=np.float64) for c in classes])
    return classes, means
