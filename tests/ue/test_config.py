"""ue.config: overrides, merge, all-at-once validation errors, dump/hash, models, data root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
import yaml

from ue.config import (
    ConfigError,
    ConfigModel,
    DataConfig,
    HeadSpec,
    LoraConfig,
    ModelConfig,
    RayResources,
    config_hash,
    data_root,
    dump_config,
    load_config,
    merge,
    parse_overrides,
)


class Pipeline(ConfigModel):
    data: DataConfig
    model: ModelConfig
    lora: LoraConfig = LoraConfig()
    heads: list[HeadSpec] = []
    resources: RayResources = RayResources()


GOOD_YAML = """\
data:
  name: glue/sst2
  columns: {text: sentence}
model:
  name_or_path: tiny-llama
  num_labels: 2
lora:
  r: 4
heads:
  - name: alien
    params: {alpha: 0.1, lr: 1e-4}
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- overrides and merge ---------------------------------------------------------------------------


def test_parse_overrides_types_and_nesting():
    tree = parse_overrides(
        ["a.b=3", "a.c=0.5", "lr=1e-4", "c=[1,2]", "d.e=null", "f=true", "g=", "h=glue/sst2", "i.j.k=x"]
    )
    assert tree == {
        "a": {"b": 3, "c": 0.5},
        "lr": 1e-4,
        "c": [1, 2],
        "d": {"e": None},
        "f": True,
        "g": "",
        "h": "glue/sst2",
        "i": {"j": {"k": "x"}},
    }


def test_parse_overrides_later_item_wins():
    assert parse_overrides(["a=1", "a.b=2"]) == {"a": {"b": 2}}
    assert parse_overrides(["a.b=2", "a=1"]) == {"a": 1}


def test_parse_overrides_reports_every_malformed_item():
    bad = ["noequals", "=3", "a..b=1", "x.=2", "ok=1", "y=[1,"]
    with pytest.raises(ConfigError) as info:
        parse_overrides(bad)
    issues = info.value.errors
    assert [issue.value for issue in issues] == ["noequals", "=3", "a..b=1", "x.=2", "[1,"]
    assert all(issue.source == "overrides" for issue in issues)
    assert "noequals" in str(info.value) and "key.sub=value" in str(info.value)


def test_parse_overrides_rejects_a_bare_string():
    with pytest.raises(TypeError, match="list"):
        parse_overrides("a=1")


def test_merge_is_deep_and_leaves_inputs_alone():
    base = {"a": {"b": 1, "c": 2}, "d": 1, "e": {"f": 1}}
    over = {"a": {"b": 10}, "d": {"x": 1}, "e": 5}
    assert merge(base, over) == {"a": {"b": 10, "c": 2}, "d": {"x": 1}, "e": 5}
    assert base == {"a": {"b": 1, "c": 2}, "d": 1, "e": {"f": 1}}
    assert over == {"a": {"b": 10}, "d": {"x": 1}, "e": 5}


# -- loading and errors ----------------------------------------------------------------------------


def test_load_good_yaml_with_overrides(tmp_path):
    cfg = load_config(Pipeline, write(tmp_path, GOOD_YAML), overrides=["lora.r=16", "model.dtype=bfloat16"])
    assert cfg.lora.r == 16 and cfg.model.dtype == "bfloat16"
    assert cfg.data.columns == {"text": "sentence"}
    assert cfg.heads[0].params == {"alpha": 0.1, "lr": 1e-4}  # 1e-4 is a float, not a string
    assert cfg.data.max_length == 128 and cfg.resources.num_workers == 1


def test_three_mistakes_are_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        """\
data: {name: glue/sst2}
model:
  name_or_path: tiny-llama
  dtype: flaot16
lora:
  r: 0
  dropuot: 0.1
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(Pipeline, path)
    by_key = {issue.key: issue for issue in info.value.errors}
    assert set(by_key) == {"model.dtype", "lora.r", "lora.dropuot"}
    assert all(issue.source == str(path) for issue in by_key.values())

    dtype = by_key["model.dtype"]
    assert dtype.value == "flaot16"
    assert "allowed: float32, bfloat16, float16" in dtype.hint and "'float16'" in dtype.hint

    rank = by_key["lora.r"]
    assert rank.value == 0 and ">= 1" in rank.message

    typo = by_key["lora.dropuot"]
    assert typo.value == 0.1 and "did you mean 'dropout'?" in typo.hint and "target_modules" in typo.hint

    text = str(info.value)
    assert text.startswith("3 problems in config:")
    assert f"{path}: model.dtype: not an allowed value (got 'flaot16'; allowed: float32" in text
    assert f"{path}: lora.dropuot: unknown key (got 0.1; allowed:" in text


def test_errors_from_overrides_name_the_override_and_missing_keys_are_listed(tmp_path):
    path = write(tmp_path, "data: {name: sst2}\n")
    with pytest.raises(ConfigError) as info:
        load_config(Pipeline, path, overrides=["lora.bias=some"])
    by_key = {issue.key: issue for issue in info.value.errors}
    assert by_key["lora.bias"].source == "overrides"
    assert "allowed: none, all, lora_only" in by_key["lora.bias"].hint
    assert by_key["model"].source == str(path) and "missing" in by_key["model"].message


def test_bad_dict_keys_get_a_dotted_key_and_suggestion():
    with pytest.raises(ConfigError) as info:
        load_config(DataConfig, data={"name": "x", "columns": {"txt": "sentence"}, "splits": {"tset": "t"}})
    by_key = {issue.key: issue for issue in info.value.errors}
    assert "did you mean 'text'" in by_key["columns.txt"].hint
    assert by_key["splits.tset"].hint == "allowed: train, val, test; did you mean 'test'?"


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "data:\n  name: x\n  bad: [1, 2\nmodel: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(Pipeline, path)
    (issue,) = info.value.errors
    assert issue.source.startswith(f"{path}:") and "malformed YAML" in issue.message


def test_duplicate_yaml_key_is_an_error(tmp_path):
    path = write(tmp_path, "data: {name: x}\nmodel: {name_or_path: a}\nmodel: {name_or_path: b}\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml:3: malformed YAML: duplicate key 'model'"):
        load_config(Pipeline, path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Pipeline, write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Pipeline, tmp_path / "nope.yaml")


# -- dump and hash ---------------------------------------------------------------------------------


def test_dump_load_round_trip(tmp_path):
    cfg = load_config(Pipeline, write(tmp_path, GOOD_YAML), overrides=["resources.use_gpu=true"])
    again = load_config(Pipeline, write(tmp_path, dump_config(cfg), "resolved.yaml"))
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_hash_is_stable_under_key_order_and_changes_with_values():
    a = load_config(DataConfig, data={"name": "x", "columns": {"text": "s", "label": "y"}, "seed": 1})
    b = load_config(DataConfig, data={"seed": 1, "columns": {"label": "y", "text": "s"}, "name": "x"})
    c = load_config(DataConfig, data={"name": "x", "columns": {"text": "s", "label": "y"}, "seed": 2})
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert yaml.safe_load(dump_config(a))["columns"] == {"text": "s", "label": "y"}


# -- models ----------------------------------------------------------------------------------------


def test_models_are_frozen_and_forbid_unknown_keys():
    cfg = LoraConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.r = 4
    with pytest.raises(pydantic.ValidationError):
        LoraConfig(rank=4)


def test_data_splits_keep_defaults_for_those_not_given():
    cfg = load_config(DataConfig, data={"name": "x"}, overrides=["splits.val=dev"])
    assert cfg.splits == {"train": "train", "val": "dev", "test": "test"}


@pytest.mark.parametrize(
    ("cls", "data", "key", "fragment"),
    [
        (DataConfig, {"name": "x", "max_length": 4}, "max_length", ">= 8"),
        (DataConfig, {"name": " "}, "name", "must not be empty"),
        (DataConfig, {"name": "x", "max_rows": {"train": 0}}, "max_rows", ">= 1"),
        (LoraConfig, {"dropout": 1.0}, "dropout", "[0, 1)"),
        (LoraConfig, {"target_modules": []}, "target_modules", "at least one"),
        (ModelConfig, {"name_or_path": "m", "num_labels": 1}, "num_labels", ">= 2"),
        (ModelConfig, {"name_or_path": "m", "task": "causal_lm", "num_labels": 3}, "num_labels", "causal_lm"),
        (RayResources, {"num_workers": 0}, "num_workers", ">= 1"),
        (RayResources, {"gpus_per_worker": 1}, "gpus_per_worker", "use_gpu: true"),
        (RayResources, {"use_gpu": True, "gpus_per_worker": 0}, "gpus_per_worker", "> 0"),
    ],
)
def test_range_checks_say_how_to_fix(cls, data, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(cls, data=data)
    (issue,) = info.value.errors
    assert issue.key == key and fragment in issue.message


def test_use_gpu_means_one_gpu_per_worker_by_default():
    assert RayResources(use_gpu=True).gpus_per_worker == 1
    assert RayResources(use_gpu=True, gpus_per_worker=0.5).gpus_per_worker == 0.5
    assert RayResources().gpus_per_worker == 0


# -- data root and import hygiene ------------------------------------------------------------------


def test_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("UE_DATA_DIR", raising=False)
    assert data_root() is None
    monkeypatch.setenv("UE_DATA_DIR", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.setenv("UE_DATA_DIR", str(tmp_path / "missing"))
    assert data_root() is None


def test_config_imports_nothing_heavy():
    code = (
        "import sys, ue.config; "
        "print(sorted(m for m in ('torch', 'ray', 'jobs', 'tuning', 'cluster') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
