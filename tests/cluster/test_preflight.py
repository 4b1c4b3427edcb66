"""`ue validate` (load_pipeline's preflight checks) refuses what a run would fail on later: unknown head
names, score and serve heads nothing saves, corpus paths that match nothing, model folders and datasets that do
not exist, each with the stage, the key, the value and the fix, and exit code 2 from the command."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster import preflight
from cluster.pipeline import PipelineError, load_pipeline

MINILM = {"name_or_path": "sentence-transformers/all-MiniLM-L6-v2", "task": "sequence_classification",
          "num_labels": 2}


def pipeline(tmp_path: Path, stages: list[dict]) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"run_id": "pre", "root": str(tmp_path / "runs"), "stages": stages}))
    return path


def problems(path: Path, **kwargs) -> list[str]:
    with pytest.raises(PipelineError) as exc:
        load_pipeline(path, **kwargs)
    return [str(p) for p in exc.value.problems]


def corpus(tmp_path: Path) -> str:
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n')
    return str(tmp_path / "c.jsonl")


def test_unknown_heads_in_fit_heads_and_tune_are_named_with_the_closest_one(tmp_path):
    found = problems(pipeline(tmp_path, [
        {"stage": "fit_heads", "config": {"heads": [{"name": "msp"}, {"name": "alein"}]}},
        {"stage": "tune", "config": {"searches": [
            {"name": "s", "head": "alein", "space": {"alpha": {"grid": [0.1]}}}]}},
    ]))
    assert len(found) == 2
    assert "stages.0 fit_heads" in found[0] and "heads.1.name: unknown head 'alein'" in found[0]
    assert "Did you mean 'alien'" in found[0]
    assert "stages.1 tune" in found[1] and "searches.0.head: unknown trained head 'alein'" in found[1]


def test_score_heads_must_be_post_hoc_saved_by_an_earlier_stage_or_on_disk(tmp_path):
    stages = [{"stage": "fit_heads", "config": {"heads": [{"name": "alien", "calibrate": "beta"}]}},
              {"stage": "score", "config": {"corpus": {"paths": [corpus(tmp_path)]}, "model": MINILM,
                                            "heads": ["alien_beta", "msp", "alein"], "ood": "mahalanobis"}}]
    found = problems(pipeline(tmp_path, stages))
    assert [f.split(": ")[1] for f in found] == ["heads.2", "ood"]
    assert "no fitted head 'alein'" in found[0] and "this pipeline saves alien_beta" in found[0]
    saved = tmp_path / "runs" / "pre" / "heads" / "mahalanobis"
    saved.mkdir(parents=True)
    (saved / "head.json").write_text("{}")
    stages[1]["config"]["heads"] = ["alien_beta", "msp"]
    assert load_pipeline(pipeline(tmp_path, stages))


def test_serve_heads_are_checked_as_score_heads_are(tmp_path):
    stages = [{"stage": "fit_heads", "config": {"heads": [{"name": "alien"}]}},
              {"stage": "serve", "config": {"heads": ["alien", "msp", "adue"], "ood": "mahalanobis"}}]
    found = problems(pipeline(tmp_path, stages))
    assert [f.split(": ")[1] for f in found] == ["heads.2", "ood"] and "stages.1 serve" in found[0]
    assert "no fitted head 'adue'" in found[0] and "this pipeline saves alien" in found[0]
    assert load_pipeline(pipeline(tmp_path, stages), check_files=False)


def test_a_corpus_path_that_matches_nothing_is_refused_but_not_in_a_submission(tmp_path):
    path = pipeline(tmp_path, [{"stage": "score", "config": {
        "corpus": {"paths": [str(tmp_path / "none*.jsonl")]}, "model": MINILM, "heads": ["msp"]}}])
    (found,) = problems(path)
    assert "corpus.paths.0" in found and "matches no file" in found
    assert load_pipeline(path, check_files=False)  # the cluster's paths are not this machine's


def test_a_model_folder_that_does_not_exist_is_refused(tmp_path):
    path = pipeline(tmp_path, [{"stage": "score", "config": {
        "corpus": {"paths": [corpus(tmp_path)]}, "model": {**MINILM, "name_or_path": str(tmp_path / "nope")},
        "heads": ["msp"]}}])
    (found,) = problems(path)
    assert "model.name_or_path" in found and "is not a folder" in found


def test_a_lora_target_the_model_does_not_have_is_refused_with_its_real_layers(tmp_path, monkeypatch):
    monkeypatch.setenv("UE_DATA_DIR", str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    finetune = {"model": MINILM, "data": {"name": "sst2", "task": "sequence_classification",
                                          "splits": {"train": "train_sentences", "val": "validation"}},
                "lora": {"target_modules": ["query", "q_proj", "value"]}}
    (found,) = problems(pipeline(tmp_path, [{"stage": "finetune", "config": finetune}]))
    assert "lora.target_modules.1" in found and "has no module named 'q_proj'" in found
    assert found.endswith("its weight matrices are in: dense, key, query, value)")  # the fix: what it has
    finetune["lora"]["target_modules"] = ["query", "key", "value", "dense"]
    assert load_pipeline(pipeline(tmp_path, [{"stage": "finetune", "config": finetune}]))


def test_a_dataset_that_is_nowhere_local_is_refused_when_the_hub_is_off(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    (data_dir / "trec").mkdir(parents=True)
    (data_dir / "trec" / "train.jsonl").write_text('{"text": "a", "label": 0}\n')
    (data_dir / "trec" / "test.jsonl").write_text('{"text": "b", "label": 0}\n')
    monkeypatch.setenv("UE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extract = {"model": MINILM, "adapter": None}
    missing = pipeline(tmp_path, [{"stage": "extract", "config": {
        **extract, "data": {"name": "no_such_set", "task": "sequence_classification"}}}])
    (found,) = problems(missing)
    assert "data.name" in found and "no local dataset 'no_such_set'" in found and str(data_dir) in found
    no_val = pipeline(tmp_path, [{"stage": "extract", "config": {
        **extract, "data": {"name": "trec", "task": "sequence_classification"}}}])
    (found,) = problems(no_val)
    assert "data.splits.val" in found and "data.val_from_train: 0.1" in found
    carved = pipeline(tmp_path, [{"stage": "extract", "config": {
        **extract, "data": {"name": "trec", "task": "sequence_classification", "val_from_train": 0.1}}}])
    assert load_pipeline(carved)


def test_ue_validate_exits_2_and_prints_each_problem(tmp_path):
    path = pipeline(tmp_path, [{"stage": "fit_heads", "config": {"heads": [{"name": "alein"}]}}])
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "heads.0.name: unknown head 'alein'" in proc.stdout + proc.stderr


def test_the_light_head_lists_match_the_registry():
    from ue.heads import HEADS
    from ue.scoring import POST_HOC_HEADS

    trained = sorted(n for n in HEADS.names() if "on_epoch" in inspect.signature(HEADS.get(n).fit).parameters)
    assert list(preflight.TRAINED_HEADS) == trained
    assert preflight.POST_HOC == POST_HOC_HEADS
