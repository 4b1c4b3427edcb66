"""jobs.extract on tiny random models over real data: the cache's content, resume, and the way on
to jobs.fit_heads for every task (sequence classification with an encoder and decoders, NER, QA)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

import jobs.extract
from jobs import fit_heads
from jobs.schemas.extract import Config
from jobs.schemas.fit_heads import Config as FitConfig
from tests.tiny import save_tiny_model
from ue.artifacts import Manifest, RunLayout
from ue.config import ConfigError, load_config
from ue.data import load_split
from ue.extraction import classify_batch
from ue.features import column
from ue.heads import load_classifier
from ue.models import load_model, load_tokenizer
from ue.tokenize import collate, encode_classification

REPO = Path(__file__).resolve().parents[2]
ROWS = {"train": 40, "val": 24, "test": 24}
DATA = {
    "sequence_classification": {"name": "sst2", "splits": {"train": "train_sentences"}},
    "token_classification": {"name": "conll2003"},
    "causal_lm": {"name": "squad", "max_length": 96, "splits": dict.fromkeys(ROWS, "dev_v2_subset_answerable")},
}


@pytest.fixture(scope="module", autouse=True)
def env():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UE_DATA_DIR", os.environ.get("UE_DATA_DIR") or str(REPO.parent / "shared" / "data"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    specs = {"bert": ("bert", "sequence_classification", 2), "llama": ("llama", "sequence_classification", 2),
             "bert_ner": ("bert", "token_classification", 9),
             "llama_lm": ("llama", "causal_lm", 2)}
    return {name: save_tiny_model(root / name, *spec[:2], num_labels=spec[2]) for name, spec in specs.items()}


def extract_config(root: Path, model: Path, task: str, **overrides) -> Config:
    data = {"task": task, "max_rows": dict(ROWS), **DATA[task]}
    base = {"run": {"root": str(root), "run_id": "r"}, "data": data,
            "model": {"name_or_path": str(model), "task": task}, "rows_per_part": 16, "batch_size": 8,
            "resources": {"num_workers": 1}, "generation": {"max_new_tokens": 4}}
    return load_config(Config, data=base, overrides=overrides)


def fit_config(root: Path, heads: list[dict], **overrides) -> FitConfig:
    return load_config(FitConfig, data={"run": {"root": str(root), "run_id": "r"}, "heads": heads}, overrides=overrides)


def read(layout: RunLayout, split: str) -> pa.Table:
    return pq.read_table(layout.features_split_dir(split))


def input_ids(cfg: Config, split: str) -> list[str]:
    d = cfg.data
    return load_split(d.name, d.splits[split], task=d.task, max_rows=d.max_rows[split], seed=d.seed)["id"].to_pylist()


SEQ_HEADS = [{"name": "msp"}, {"name": "entropy"}, {"name": "temperature"}, {"name": "mahalanobis"},
             {"name": "relative_mahalanobis"}, {"name": "adue", "params": {"epochs": 1}},
             {"name": "alien", "params": {"epochs": 1}}]


@pytest.mark.parametrize("name,side,actors", [("bert", None, 2), ("llama", "left", 1)])
def test_sequence_classification_through_extract_and_fit_heads(models, tmp_path, name, side, actors, capsys):
    cfg = extract_config(tmp_path, models[name], "sequence_classification", padding_side=side,
                         **{"resources.num_workers": actors})
    outputs = jobs.extract.run(cfg)
    layout = RunLayout(tmp_path, "r")
    meta = json.loads(layout.features_meta.read_text())
    assert outputs["rows"] == ROWS
    assert (meta["num_labels"], meta["hidden_size"], meta["adapter"]) == (2, 64, None)
    assert meta["classifier"] == ("bert_pooler" if name == "bert" else "linear")
    assert meta["splits"]["train"] == {"examples": 40, "rows": 40, "parts": 3}

    clf = load_classifier(layout.features_dir).eval()
    model = load_model(str(models[name]), task="sequence_classification", num_labels=2).eval()
    tok = load_tokenizer(str(models[name]), padding_side=side)
    for split in ROWS:
        table = read(layout, split)
        assert table.schema.field("hidden").type == pa.list_(pa.float32(), 64)
        assert sorted(table["id"].to_pylist()) == sorted(input_ids(cfg, split))  # one row per input id
        hidden, logits = column(table, "hidden"), column(table, "logits")
        with torch.no_grad():
            np.testing.assert_allclose(clf(torch.from_numpy(hidden)).numpy(), logits, atol=1e-5)
        np.testing.assert_array_equal(column(table, "pred"), logits.argmax(1))
    # Rows come back in input order with the features of their own text, despite length bucketing.
    val = load_split("sst2", "validation", task="sequence_classification", max_rows=24)
    batch = collate(encode_classification(tok, val["text"].to_pylist(), max_length=128), pad_id=tok.pad_token_id,
                    padding_side=tok.padding_side)
    direct = classify_batch(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    cached = read(layout, "val")
    assert cached["id"].to_pylist() == val["id"].to_pylist()
    np.testing.assert_allclose(column(cached, "logits"), direct.logits, atol=1e-4)
    np.testing.assert_array_equal(column(cached, "label"), val["label"].to_numpy())

    fit_heads.run(fit_config(tmp_path, SEQ_HEADS))
    report = json.loads(layout.stage_dir("fit_heads").joinpath("metrics.json").read_text())
    assert set(report["metrics"]) == {"val", "test"}
    for split in ("val", "test"):
        assert set(report["metrics"][split]) == {h["name"] for h in SEQ_HEADS}
        assert report["metrics"][split]["msp"]["n"] == ROWS[split]
    assert all((layout.head_dir(h["name"]) / "head.json").is_file() for h in SEQ_HEADS)
    assert "test split" in capsys.readouterr().out


def test_token_classification_gives_one_row_per_word(models, tmp_path):
    cfg = extract_config(tmp_path, models["bert_ner"], "token_classification", **{"data.max_rows.train": 16})
    jobs.extract.run(cfg)
    layout = RunLayout(tmp_path, "r")
    sentences = load_split("conll2003", "validation", task="token_classification", max_rows=24)
    table = read(layout, "val")
    words = [(sid, w) for sid, toks in zip(sentences["id"].to_pylist(), sentences["tokens"].to_pylist(), strict=True)
             for w in range(len(toks))]
    assert table["id"].to_pylist() == [f"{sid}/{w}" for sid, w in words]
    tags = dict(zip(sentences["id"].to_pylist(), sentences["tags"].to_pylist(), strict=True))
    tokens = dict(zip(sentences["id"].to_pylist(), sentences["tokens"].to_pylist(), strict=True))
    assert column(table, "label").tolist() == [tags[sid][w] for sid, w in words]
    assert table["word"].to_pylist() == [tokens[sid][w] for sid, w in words]
    assert table["word_index"].to_pylist() == [w for _, w in words]
    assert json.loads(layout.features_meta.read_text())["num_labels"] == 9

    heads = [{"name": "msp"}, {"name": "mahalanobis"}, {"name": "alien", "params": {"epochs": 1}}]
    fit_heads.run(fit_config(tmp_path, heads))
    report = json.loads(layout.stage_dir("fit_heads").joinpath("metrics.json").read_text())
    assert report["metrics"]["val"]["alien"]["n"] == len(words)


def test_causal_lm_qa_rows_carry_the_answer_its_correctness_and_uncertainty(models, tmp_path):
    cfg = extract_config(tmp_path, models["llama_lm"], "causal_lm", **{"data.max_rows.train": 16})
    jobs.extract.run(cfg)
    layout = RunLayout(tmp_path, "r")
    meta = json.loads(layout.features_meta.read_text())
    assert (meta["num_labels"], meta["hidden_size"], meta["classifier"]) == (2, 64, None)
    table = read(layout, "test")
    assert {"answer", "generated", "rouge_l", "correct", "token_entropy_mean", "perplexity"} <= set(table.column_names)
    rouge, correct = column(table, "rouge_l"), column(table, "correct")
    np.testing.assert_array_equal(correct, rouge > 0.3)
    np.testing.assert_array_equal(column(table, "label"), correct.astype(int))  # e = 1 - correct
    np.testing.assert_array_equal(column(table, "pred"), 1)
    logits = column(table, "logits").astype(np.float64)
    p_right = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    np.testing.assert_allclose(p_right, np.clip(1 / column(table, "perplexity"), 1e-6, 1 - 1e-6), rtol=1e-4)
    assert (column(table, "num_generated_tokens") <= 4).all() and (column(table, "token_entropy_mean") >= 0).all()

    with pytest.raises(ValueError, match="has none"):  # no classification module for ALIEN to copy
        fit_heads.run(fit_config(tmp_path, [{"name": "alien"}]))
    qa = fit_config(tmp_path, [{"name": "msp"}, {"name": "entropy"}, {"name": "mahalanobis"}],
                    score_columns=["token_entropy_mean", "perplexity"])
    fit_heads.run(qa)
    report = json.loads(layout.stage_dir("fit_heads").joinpath("metrics.json").read_text())
    assert set(report["metrics"]["test"]) == {"msp", "entropy", "mahalanobis", "token_entropy_mean", "perplexity"}


class Interrupted(Exception):
    pass


def test_an_interrupted_extraction_resumes_with_one_row_per_input_id(models, tmp_path, monkeypatch):
    cfg = extract_config(tmp_path, models["bert"], "sequence_classification", rows_per_part=4, splits=["train"])
    layout = RunLayout(tmp_path, "r")
    progress = jobs.extract._progress

    def stop_after_first(done, total, row):
        progress(done, total, row)
        raise Interrupted

    monkeypatch.setattr(jobs.extract, "_progress", stop_after_first)
    with pytest.raises(Interrupted):
        jobs.extract.run(cfg)
    monkeypatch.undo()
    assert Manifest(layout).stage("extract")["status"] == "failed"
    before = {p.name: p.stat().st_mtime_ns for p in layout.features_split_dir("train").glob("part-*.parquet")}
    assert 1 <= len(before) < 10 and not layout.features_meta.exists()

    jobs.extract.run(cfg)
    ids = read(layout, "train")["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 40 and set(ids) == set(input_ids(cfg, "train"))
    after = {p.name: p.stat().st_mtime_ns for p in layout.features_split_dir("train").glob("part-*.parquet")}
    assert len(after) == 10 and all(after[name] == t for name, t in before.items())  # finished parts kept
    assert Manifest(layout).stage("extract")["status"] == "done"

    # Another content (here: truncation) must not mix with the cached parts: they are rebuilt.
    jobs.extract.run(extract_config(tmp_path, models["bert"], "sequence_classification", rows_per_part=4,
                                    splits=["train"], **{"data.max_length": 16}))
    rebuilt = {p.name: p.stat().st_mtime_ns for p in layout.features_split_dir("train").glob("part-*.parquet")}
    assert all(rebuilt[name] != t for name, t in after.items())


def test_a_missing_adapter_says_where_it_looked(models, tmp_path):
    cfg = extract_config(tmp_path, models["bert"], "sequence_classification", adapter="finetune")
    with pytest.raises(FileNotFoundError, match=r"finetune/adapter holds no PEFT adapter"):
        jobs.extract.run(cfg)


def test_shipped_configs_validate_and_task_mismatch_is_refused(tmp_path, models):
    for path in sorted((REPO / "jobs" / "configs" / "extract").glob("*.yaml")):
        load_config(Config, path)
    with pytest.raises(ConfigError, match="data.task .* and model.task .* differ"):
        extract_config(tmp_path, models["bert"], "sequence_classification", **{"model.task": "causal_lm"})
