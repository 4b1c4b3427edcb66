"""Shared fixtures: small seeded feature tables, classification modules, a local Ray per module."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tests.tuning.synthetic import start_ray
from ue.heads.modules import Classifier, ClassifierSpec


def make_features(classifier: Classifier, n: int, *, seed: int, noise: float = 1.5) -> dict[str, np.ndarray]:
    """Hidden states, the classifier's logits/pred, and labels that disagree with pred on some rows."""
    rng = np.random.default_rng(seed)
    d = classifier.spec.hidden_size
    hidden = rng.normal(size=(n, d)).astype(np.float32)
    classifier.eval()
    with torch.no_grad():
        logits = classifier(torch.from_numpy(hidden)).numpy()
    labels = (logits + noise * rng.normal(size=logits.shape)).argmax(1)
    return {
        "id": np.arange(n).astype(str),
        "hidden": hidden,
        "logits": logits.astype(np.float32),
        "pred": logits.argmax(1),
        "label": labels,
    }


@pytest.fixture
def linear_classifier() -> Classifier:
    torch.manual_seed(0)
    clf = Classifier(ClassifierSpec("linear", hidden_size=16, num_labels=3, bias=False))
    with torch.no_grad():
        clf.out_proj.weight.mul_(4.0)  # confident enough that errors and successes both occur
    return clf


@pytest.fixture
def splits(linear_classifier: Classifier) -> dict[str, dict[str, np.ndarray]]:
    return {name: make_features(linear_classifier, n, seed=s) for name, n, s in
            (("train", 600, 1), ("val", 300, 2), ("test", 300, 3))}


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    start_ray()
    yield
    ray.shutdown()
