"""A synthetic feature cache whose best regularisation is known by construction.

The "model" is a random ``Linear(d, 2)``; on val (and a clean test) its errors are exactly the rows
where it is least sure (smallest logit margin), so the untouched copy of its classifier already ranks
errors perfectly. On train the errors sit where a *different* direction ``v`` of the hidden state is
small, so a head that follows the train errors drifts away from that ranking: the strongest L2-SP
pull back to the initial weights (largest ``beta``) wins on val. A poisoned test split puts its
errors where train has them, so a search that looked at test would prefer weak regularisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ue.artifacts import RunLayout
from ue.heads.modules import Classifier, ClassifierSpec, save_classifier

ERROR_RATE = 0.25


def _vectors(values: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def _split(rng: np.random.Generator, w: np.ndarray, v: np.ndarray, n: int, *, errors_follow: str) -> pa.Table:
    hidden = rng.normal(size=(n, w.shape[1])).astype(np.float32)
    logits = hidden @ w.T
    pred = logits.argmax(1)
    driver = np.abs(logits[:, 1] - logits[:, 0]) if errors_follow == "model" else np.abs(hidden @ v)
    error = driver < np.quantile(driver, ERROR_RATE)
    label = np.where(error, 1 - pred, pred)
    return pa.table({
        "id": pa.array([f"r{i}" for i in range(n)]),
        "label": pa.array(label.astype(np.int64)),
        "pred": pa.array(pred.astype(np.int64)),
        "logits": _vectors(logits),
        "hidden": _vectors(hidden),
    })


def write_synthetic_run(
    root: Path, run_id: str, *, d: int = 8, rows: tuple[int, int, int] = (400, 300, 300), seed: int = 0,
    poison_test: bool = False,
) -> RunLayout:
    """Write ``<root>/<run_id>/features/`` (train in two part files) and the classifier; return the layout."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2, d)).astype(np.float32) * 2.0
    v = rng.normal(size=d).astype(np.float32)
    layout = RunLayout(root, run_id)
    follows = {"train": "other", "val": "model", "test": "other" if poison_test else "model"}
    for split, n in zip(("train", "val", "test"), rows, strict=True):
        table = _split(np.random.default_rng([seed, len(split)]), w, v, n, errors_follow=follows[split])
        folder = layout.features_split_dir(split)
        folder.mkdir(parents=True, exist_ok=True)
        half = n // 2 if split == "train" else n
        for index, start in enumerate(range(0, n, half)):
            pq.write_table(table.slice(start, half), folder / f"part-{index:05d}.parquet")
    classifier = Classifier(ClassifierSpec("linear", hidden_size=d, num_labels=2, bias=False))
    with torch.no_grad():
        classifier.out_proj.weight.copy_(torch.from_numpy(w))
    save_classifier(classifier, layout.features_dir)
    return layout


def start_ray() -> None:
    """A small local Ray for tests: 2 CPUs, a 256 MiB object store, no dashboard."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2, log_to_driver=False,
             configure_logging=False)
