"""A prepared run directory (cached features + saved heads), as extract and fit_heads would leave it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ue.artifacts import RunLayout
from ue.feature_cache import feature_table, part_path, write_part
from ue.heads import build_head

HEADS = ("msp", "entropy")


def make_run_dir(root: Path, run_id: str, *, n: int = 200, classes: int = 3, seed: int = 0) -> RunLayout:
    """Seeded features for val and test (some predictions wrong) and the msp/entropy heads saved."""
    layout = RunLayout(root, run_id)
    rng = np.random.default_rng(seed)
    for split in ("val", "test"):
        logits = rng.normal(scale=2.0, size=(n, classes)).astype(np.float32)
        pred = logits.argmax(1)
        # Confident rows keep their prediction as label; unsure ones get a random label, so errors exist.
        unsure = np.sort(logits, 1)[:, -1] - np.sort(logits, 1)[:, -2] < 1.0
        label = np.where(unsure, rng.integers(0, classes, size=n), pred)
        table = feature_table(ids=[f"{split}-{i}" for i in range(n)], label=label, pred=pred, logits=logits,
                              hidden=rng.normal(size=(n, 8)).astype(np.float32))
        write_part(table, part_path(layout.features_split_dir(split), 0))
    for name in HEADS:
        build_head(name).fit(None).save(layout.head_dir(name))
    return layout
