"""The score stage end to end on a tiny BERT: bad rows quarantined, good rows scored once, columns
equal to the heads' own scores, resume after an interruption, text-only scoring."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs._common import job_main
from jobs.schemas.score import Config
from jobs.score import run
from tests.jobs.score_run import sentences, write_mixed_corpus, write_scoring_run
from tests.tiny import save_tiny_model
from ue.artifacts import Manifest, RunLayout
from ue.config import ConfigError, load_config
from ue.corpus import Columns, list_inputs, plan_blocks, read_block
from ue.scoring import calibrate, read_quarantine, read_scores

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("model"), "bert", "sequence_classification"))


def _config(root: Path, run_id: str, model: str, paths: list[str], **extra: Any) -> Config:
    data = {"run": {"root": str(root), "run_id": run_id}, "model": {"name_or_path": model},
            "corpus": {"paths": paths, "max_length": 32, "rows_per_block": 8}, **extra}
    return load_config(Config, data=data)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, model_dir: str, ray_local: None) -> dict[str, Any]:
    """The mixed corpus scored with ALIEN (decision), MSP and a Mahalanobis OOD score."""
    tmp = tmp_path_factory.mktemp("score")
    layout = write_scoring_run(tmp / "runs", "mixed", model_dir)
    expected = write_mixed_corpus(tmp / "corpus")
    cfg = _config(tmp / "runs", "mixed", model_dir, [str(tmp / "corpus")], heads=["alien", "msp"],
                  ood="mahalanobis", accept={"head": "alien", "target_error": 0.45, "delta": 0.2})
    return {"layout": layout, "expected": expected, "cfg": cfg, "summary": run(cfg), "corpus": tmp / "corpus"}


def test_every_good_row_is_scored_once_and_every_bad_row_quarantined_with_its_reason(scored):
    layout, expected = scored["layout"], scored["expected"]
    scores = read_scores(layout.scores_dir).to_pandas()
    assert sorted(scores["id"]) == sorted(expected["good"]) and scores["id"].is_unique
    quarantine = read_quarantine(layout.quarantine_dir).to_pandas()
    got = {(Path(f).name, line): reason for f, line, reason in zip(quarantine["file"], quarantine["line"],
                                                                   quarantine["reason"], strict=True)}
    assert set(got) == set(expected["bad"])
    for key, reason in expected["bad"].items():
        assert got[key].startswith(reason), (key, got[key])
    assert scores.loc[scores["truncated"], "id"].tolist() == [expected["long"]]
    summary = scored["summary"]
    assert (summary["scored"], summary["quarantined"], summary["truncated"]) == (len(expected["good"]),
                                                                                len(expected["bad"]), 1)
    assert summary["rows"] == summary["scored"] + summary["quarantined"]
    assert summary["accepted"] == int(scores["accept"].sum())
    assert summary["duplicate_ids"] == len(scores) - scores["id"].nunique()
    assert json.loads((layout.scores_dir / "summary.json").read_text())["rows"] == summary["rows"]
    assert Manifest(layout).is_done("score")


def test_columns_equal_the_heads_scores_and_accept_follows_the_calibrated_threshold(scored, model_dir):
    from ue.extraction import classify_batch
    from ue.feature_cache import part_files
    from ue.heads import load_head
    from ue.models import load_model, load_tokenizer
    from ue.tokenize import collate, encode_classification

    layout = scored["layout"]
    scores = read_scores(layout.scores_dir).to_pandas().set_index("id")
    assert list(scores.columns) == ["pred", "confidence", "u_alien", "u_msp", "ood", "accept", "truncated"]
    rows = [read_block(b, Columns()) for b in plan_blocks(list_inputs([str(scored["corpus"] / "docs.jsonl")]),
                                                          rows_per_block=99, block_bytes=10**6)]
    texts = {i: t for r in rows for i, t, why in zip(r["id"], r["text"], r["reason"], strict=True) if why is None}
    ids = sorted(texts)[:10]
    tok, model = load_tokenizer(model_dir), load_model(model_dir, task="sequence_classification", num_labels=2).eval()
    batch = collate(encode_classification(tok, [texts[i] for i in ids], max_length=32), pad_id=tok.pad_token_id)
    out = classify_batch(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    features = {"hidden": out.hidden, "logits": out.logits}
    alien, mahalanobis = load_head(layout.head_dir("alien")), load_head(layout.head_dir("mahalanobis"))
    got = scores.loc[ids]
    np.testing.assert_array_equal(got["pred"], out.pred)
    np.testing.assert_allclose(got["u_alien"], alien.uncertainty(features), rtol=1e-4)
    np.testing.assert_allclose(got["ood"], mahalanobis.uncertainty(features), rtol=1e-3)
    np.testing.assert_allclose(got["confidence"] + got["u_msp"], 1.0)

    val = pq.read_table(part_files(layout.features_split_dir("val")))
    threshold = calibrate(alien, val, target_error=0.45, delta=0.2)
    saved = json.loads((layout.scores_dir / "threshold.json").read_text())
    assert saved["threshold"] == pytest.approx(threshold.threshold) and math.isfinite(threshold.threshold)
    assert (scores["accept"] == (scores["u_alien"] <= threshold.threshold)).all()
    assert 0 < scores["accept"].sum() < len(scores)


def test_a_rerun_redoes_only_the_unfinished_blocks(scored):
    layout, cfg = scored["layout"], scored["cfg"]
    shards = sorted(layout.scores_dir.glob("part-*.parquet"))
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    # A kill leaves: a shard without its progress record, a block with neither, a half-written file.
    written_only, untouched_name = shards[1], shards[2].name
    (layout.scores_dir / "progress" / f"{written_only.stem}.json").unlink()
    for path in (shards[2], layout.scores_dir / "progress" / f"{shards[2].stem}.json"):
        path.unlink()
    (layout.scores_dir / f".{shards[3].name}.abc.tmp").write_bytes(b"half")
    Manifest(layout).update("score", status="running")

    again = run(cfg)
    for key in ("blocks", "rows", "scored", "quarantined", "truncated", "accepted", "threshold"):
        assert again[key] == scored["summary"][key], key
    assert 0 < again["rows_this_run"] < again["rows"]
    after = {p.name: p.stat().st_mtime_ns for p in layout.scores_dir.glob("part-*.parquet")}
    redone = {name for name in after if after[name] != before.get(name)}
    assert redone == {written_only.name, untouched_name}
    assert not list(layout.scores_dir.glob(".*.tmp"))
    ids = read_scores(layout.scores_dir)["id"].to_pylist()
    assert sorted(ids) == sorted(scored["expected"]["good"])


def test_text_only_scoring_needs_no_heads_and_a_changed_config_starts_over(tmp_path, model_dir, ray_local):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(sentences(20, seed=3)) + "\n", encoding="utf-8")
    config = tmp_path / "score.yaml"
    config.write_text(json.dumps({"corpus": {"paths": [str(corpus)], "rows_per_block": 6},
                                  "model": {"name_or_path": model_dir, "num_labels": 2}}))
    job_main(Config, run, argv=["--config", str(config), f"run.root={tmp_path}", "run.run_id=plain"])
    layout = RunLayout(tmp_path, "plain")
    scores = read_scores(layout.scores_dir).to_pandas()
    assert list(scores.columns) == ["id", "pred", "confidence", "u_msp", "u_entropy", "truncated"]
    assert scores["id"].tolist() == [f"lines.txt:{i}" for i in range(1, 21)]
    p = scores["confidence"].to_numpy()
    np.testing.assert_allclose(scores["u_entropy"], -(p * np.log(p) + (1 - p) * np.log(1 - p)) / math.log(2))

    Manifest(layout).update("score", status="failed")  # a crashed run whose config is then changed
    job_main(Config, run, argv=["--config", str(config), f"run.root={tmp_path}", "run.run_id=plain", "heads=[msp]"])
    assert read_scores(layout.scores_dir).column_names == ["id", "pred", "confidence", "u_msp", "truncated"]


def test_setup_errors_name_the_fix(tmp_path, model_dir):
    layout = write_scoring_run(tmp_path, "r", model_dir, n_val=40)
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="run the fit_heads stage"):
        run(_config(tmp_path, "r", model_dir, [str(corpus)], heads=["adue"]))
    with pytest.raises(ValueError, match="only hold for the model they were fitted on"):
        run(_config(tmp_path, "r", str(tmp_path), [str(corpus)]))
    shutil.rmtree(layout.features_dir)
    with pytest.raises(FileNotFoundError, match="run the extract stage first, or set accept=null"):
        run(_config(tmp_path, "r", model_dir, [str(corpus)], accept={}))


def test_config_checks_itself():
    base = {"corpus": {"paths": ["x.jsonl"]}, "model": {"name_or_path": "m"}}
    cases = {
        "accept.head 'alien' is not in heads": {"accept": {"head": "alien"}},
        "supports sequence_classification": {"model": {"name_or_path": "m", "task": "causal_lm"}},
        "accept needs a head": {"heads": [], "accept": {}},
        "must be in (0, 64]": {"corpus": {"paths": ["x"], "block_mb": 100}},
        "must be in (0, 1)": {"accept": {"target_error": 0}},
    }
    for message, change in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            load_config(Config, data={**base, **change})
    assert load_config(Config, data={**base, "accept": {}}).decision == "msp"


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs" / "score").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path):
    load_config(Config, path)
