"""The NER path end to end through the pipeline runner on a tiny token-classification model: CoNLL-2003
rows -> LoRA fine-tune -> extract (one feature row per word) -> fit_heads -> tune (a small ALIEN grid)
-> scoring raw sentences (per-word tags and uncertainties, the sentence score the max over words)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from scipy.special import log_softmax
from sklearn.metrics import roc_auc_score

from cluster.pipeline import load_pipeline
from cluster.runner import run_embedded
from tests.tiny import save_tiny_model
from ue.data import load_split
from ue.scoring import read_quarantine, read_scores

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_conll2003_through_every_stage_with_a_tiny_token_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import ray

    data_root = Path(os.environ.get("UE_DATA_DIR") or REPO.parent / "shared" / "data")
    monkeypatch.setenv("UE_DATA_DIR", str(data_root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tags = json.loads((data_root / "conll2003" / "labels.json").read_text())
    model_dir = save_tiny_model(tmp_path / "model", "bert", "token_classification", num_labels=9)
    rows = {"train": 96, "val": 32, "test": 32}
    data = {"name": "conll2003", "task": "token_classification", "max_length": 48, "max_rows": rows,
            "splits": {"train": "train", "val": "validation", "test": "test"}}
    model = {"name_or_path": str(model_dir), "task": "token_classification", "num_labels": 9}
    few = {"num_workers": 1, "cpus_per_worker": 1}
    sentences = ["Peter Blackburn flew to Berlin .", "The EU rejects German calls .", "x " * 60]
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    doc = {"run_id": "ner", "root": str(tmp_path / "runs"), "retries": 0, "stages": [
        {"stage": "finetune", "config": {
            "data": data, "model": model, "resources": few,
            "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
            "train": {"loss": "ce", "epochs": 1, "batch_size": 16, "lr": 5e-3, "select_metric": "val_accuracy"}}},
        {"stage": "extract", "config": {"data": data, "model": model, "adapter": "finetune", "resources": few,
                                        "batch_size": 16}},
        {"stage": "fit_heads", "config": {"heads": [
            {"name": "msp"}, {"name": "entropy"}, {"name": "mahalanobis"},
            {"name": "alien", "params": {"epochs": 3, "patience": None, "batch_size": 64}}],
            "fit_split": "train", "eval_splits": ["val", "test"]}},
        {"stage": "tune", "config": {"searches": [{
            "name": "alien_small", "head": "alien", "params": {"epochs": 2, "batch_size": 64, "alpha": 0.1},
            "space": {"beta": {"grid": [0.0, 0.1]}}, "max_concurrent_trials": 2}]}},
        {"stage": "score", "config": {
            "model": model, "adapter": "finetune", "heads": ["msp", "alien", "alien_small"], "tag_names": tags,
            "corpus": {"paths": [str(corpus)], "max_length": 16, "rows_per_block": 2}, "resources": few}},
    ]}
    path = tmp_path / "ner.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        outcomes = run_embedded(load_pipeline(path), verbose=True, num_cpus=2)
    finally:
        ray.shutdown()
    assert [o.status for o in outcomes] == ["done"] * 5

    run = tmp_path / "runs" / "ner"
    test = pq.read_table(run / "features" / "split=test").to_pandas()
    split = load_split("conll2003", "test", task="token_classification", max_rows=rows["test"])
    words = [f"{sid}/{w}" for sid, toks in zip(split["id"].to_pylist(), split["tokens"].to_pylist(), strict=True)
             for w in range(len(toks))]
    assert sorted(test["id"]) == sorted(words)  # one feature row per word of every test sentence

    errors = (test["label"] != test["pred"]).to_numpy().astype(int)
    msp = 1 - np.exp(log_softmax(np.stack(test["logits"].to_numpy()).astype(np.float64), axis=1).max(1))
    scored = json.loads((run / "fit_heads" / "metrics.json").read_text())["metrics"]["test"]
    assert scored["msp"]["roc_auc"] == pytest.approx(roc_auc_score(errors, msp), abs=1e-6)
    assert {"msp", "entropy", "mahalanobis", "alien", "alien_small"} <= {p.name for p in (run / "heads").iterdir()}
    best = json.loads((run / "tune" / "alien_small" / "best.json").read_text())
    assert best["configs"] == 2 and best["searched"]["beta"] in (0.0, 0.1)

    rows_out = read_scores(run / "scores").to_pylist()
    assert [r["words"] for r in rows_out] == [s.split() for s in sentences]
    assert [r["truncated"] for r in rows_out] == [False, False, True]
    for row in rows_out:
        kept = [i for i, p in enumerate(row["pred"]) if p is not None]
        assert row["tags"][: len(kept)] == [tags[row["pred"][i]] for i in kept]
        for head in ("msp", "alien", "alien_small"):
            assert row[f"sentence_u_{head}"] == pytest.approx(max(row[f"u_{head}"][i] for i in kept))
    assert read_quarantine(run / "scores" / "quarantine").num_rows == 0
