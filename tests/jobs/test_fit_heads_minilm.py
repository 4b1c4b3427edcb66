"""Real features: all-MiniLM-L6-v2 + a quickly trained LoRA adapter on an SST-2 subset, through
jobs.extract and jobs.fit_heads. ALIEN at initialisation is the model's normalised entropy on every
row, and the Parquet cache reads back in pandas and pyarrow with the documented types."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

import jobs.extract
from jobs import fit_heads
from jobs.schemas.extract import Config
from jobs.schemas.fit_heads import Config as FitConfig
from tests.tiny import MINILM
from ue.artifacts import RunLayout
from ue.config import load_config
from ue.data import load_split
from ue.features import column
from ue.heads import Entropy, load_head
from ue.models import apply_lora, load_model, load_tokenizer
from ue.tokenize import collate, encode_classification

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ROWS = {"train": 128, "val": 64, "test": 96}


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    """A run whose finetune/adapter holds a LoRA adapter trained for 12 steps on 96 sentences (enough
    to move the adapter and the classifier away from their initial values)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UE_DATA_DIR", os.environ.get("UE_DATA_DIR") or str(REPO.parent / "shared" / "data"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        root = tmp_path_factory.mktemp("runs")
        _quick_lora(RunLayout(root, "minilm").adapter_dir)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield root
        finally:
            ray.shutdown()


def _quick_lora(adapter_dir: Path) -> None:
    torch.manual_seed(0)
    tok = load_tokenizer(MINILM)
    model = apply_lora(load_model(MINILM, task="sequence_classification", num_labels=2),
                       task="sequence_classification", r=4, alpha=8, dropout=0.0, target_modules=["query", "value"])
    rows = load_split("sst2", "train_sentences", task="sequence_classification", max_rows=96, seed=1)
    encoded = encode_classification(tok, rows["text"].to_pylist(), max_length=48)
    labels = torch.tensor(rows["label"].to_pylist())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for step in range(12):
        idx = list(range(8 * step, 8 * step + 8))
        batch = collate([encoded[i] for i in idx], pad_id=tok.pad_token_id)
        loss = model(**batch, labels=labels[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(adapter_dir)


def test_alien_at_initialisation_is_the_normalised_entropy_on_real_features(run_root):
    layout = RunLayout(run_root, "minilm")
    cfg = load_config(Config, REPO / "jobs" / "configs" / "extract" / "minilm_sst2.yaml", overrides=[
        f"run.root={run_root}", "run.run_id=minilm", f"data.max_rows={json.dumps(ROWS)}", "rows_per_part=64",
        "resources.num_workers=1", "resources.cpus_per_worker=2",
    ])
    jobs.extract.run(cfg)
    meta = json.loads(layout.features_meta.read_text())
    assert (meta["classifier"], meta["num_labels"], meta["hidden_size"]) == ("bert_pooler", 2, 384)
    assert meta["adapter"] == str(layout.adapter_dir)

    heads = [{"name": "entropy"}, {"name": "alien", "params": {"epochs": 0}}]
    fit_heads.run(load_config(FitConfig, data={"run": {"root": str(run_root), "run_id": "minilm"}, "heads": heads}))
    for split in ("train", "val", "test"):
        table = pq.read_table(layout.features_split_dir(split))
        alien = load_head(layout.head_dir("alien")).uncertainty(table)
        entropy = Entropy().uncertainty(table)
        assert len(alien) == ROWS[split]
        np.testing.assert_allclose(alien, np.clip(entropy, 1e-7, 1 - 1e-7), rtol=0, atol=1e-5)
    report = json.loads((layout.stage_dir("fit_heads") / "metrics.json").read_text())
    test = report["metrics"]["test"]
    assert test["alien"]["roc_auc"] == pytest.approx(test["entropy"]["roc_auc"], abs=1e-3)


def test_the_real_cache_reads_back_with_the_documented_types(run_root):
    split_dir = RunLayout(run_root, "minilm").features_split_dir("test")
    table = pq.read_table(split_dir)
    expected = pa.schema([("id", pa.string()), ("label", pa.int64()), ("pred", pa.int64()),
                          ("logits", pa.list_(pa.float32(), 2)), ("hidden", pa.list_(pa.float32(), 384))])
    assert table.schema.remove_metadata().equals(expected)
    frame = pd.read_parquet(split_dir)
    assert list(frame.columns) == ["id", "label", "pred", "logits", "hidden"]
    assert frame["label"].dtype == np.int64 and frame["pred"].dtype == np.int64
    assert isinstance(frame["id"].iloc[0], str) and frame["id"].is_unique and len(frame) == ROWS["test"]
    assert frame["hidden"].iloc[0].dtype == np.float32 and frame["hidden"].iloc[0].shape == (384,)
    np.testing.assert_array_equal(np.stack(frame["logits"]), column(table, "logits"))
    np.testing.assert_array_equal(frame["pred"], column(table, "logits").argmax(1))
