"""The QA path end to end through the pipeline runner: generated task -> decoder from scratch ->
full-parameter fine-tune with UA-CLM -> extract (greedy answers) -> fit_heads (the shipped qa.yaml)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from cluster.pipeline import load_pipeline
from cluster.runner import run_embedded
from ue.synthetic_qa import TaskSpec, build_decoder, write_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_generated_qa_through_every_stage_with_a_decoder_trained_from_scratch(tmp_path: Path):
    import ray

    write_dataset(tmp_path / "data", TaskSpec(n_entities=8, n_val=16, n_test=24))
    build_decoder(tmp_path / "decoder", data=tmp_path / "data", seed=0, hidden_size=32, layers=1, heads=2)
    data = {"name": str(tmp_path / "data"), "task": "causal_lm", "max_length": 32,
            "splits": {"train": "train", "val": "validation", "test": "test"}}
    model = {"name_or_path": str(tmp_path / "decoder"), "task": "causal_lm"}
    few = {"num_workers": 1, "cpus_per_worker": 1}
    doc = {"run_id": "qa", "root": str(tmp_path / "runs"), "retries": 0, "stages": [
        {"stage": "finetune", "config": {"data": data, "model": model, "lora": None, "resources": few,
                                         "train": {"loss": "ua_clm", "epochs": 1, "batch_size": 16, "lr": 1e-2}}},
        {"stage": "extract", "config": {"data": data, "model": model, "adapter": "finetune", "resources": few,
                                        "generation": {"max_new_tokens": 3}}},
        {"stage": "fit_heads", "config": str(REPO / "jobs/configs/fit_heads/qa.yaml")}]}
    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        outcomes = run_embedded(load_pipeline(path), verbose=True, num_cpus=2)
    finally:
        ray.shutdown()
    assert [o.status for o in outcomes] == ["done"] * 3

    run = tmp_path / "runs" / "qa"
    exported = run / "finetune" / "adapter"
    assert not (exported / "adapter_config.json").exists() and (exported / "tokenizer.json").is_file()
    before, after = load_file(tmp_path / "decoder" / "model.safetensors"), load_file(exported / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(not np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)  # every weight trained
    assert json.loads((run / "finetune" / "metrics.json").read_text())["full_parameters"] is True

    test = pq.read_table(run / "features" / "split=test").to_pandas()
    assert len(test) == 24 and set(test["label"]) <= {0, 1} and (test["pred"] == 1).all()
    assert np.array_equal(test["label"], (test["rouge_l"] > 0.3).astype(int))
    assert json.loads((run / "features" / "features.json").read_text())["model"] == str(exported)

    scored = json.loads((run / "fit_heads" / "metrics.json").read_text())["metrics"]["test"]
    errors = 1 - test["label"].to_numpy()
    for column in ("token_entropy_mean", "perplexity"):
        value = scored[column]["roc_auc"]
        if 0 < errors.sum() < len(errors):
            assert value == pytest.approx(roc_auc_score(errors, test[column]))
        else:  # one class only: undefined
            assert math.isnan(value)
    assert {"msp", "entropy", "mahalanobis"} <= {p.name for p in (run / "heads").iterdir()}
