"""Every file under jobs/configs/ is checked the way `ue validate` checks it: pipelines as they are, each
stage config inside a one-stage pipeline (the same `load_pipeline` call the command makes), the
DeepSpeed JSON files by the name a finetune config gives them. A new folder or a file no rule covers
fails, so nothing is shipped unchecked. (The tune configs also run one real trial per search in
tests/jobs/test_tune_shipped.py; the demo pipeline runs end to end in `make demo`.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cluster.pipeline import load_pipeline
from jobs.schemas.finetune import deepspeed_path

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
STAGE_FOLDERS = ("finetune", "extract", "fit_heads", "tune", "score", "serve")
SHIPPED = sorted(p for p in CONFIGS.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def data_dir(monkeypatch):
    """The shipped configs read $UE_DATA_DIR; without it, the data beside the checkout (as .ci/run)."""
    import os

    if not os.environ.get("UE_DATA_DIR"):
        monkeypatch.setenv("UE_DATA_DIR", str(CONFIGS.parents[2] / "shared" / "data"))


def test_every_shipped_file_is_in_a_checked_folder():
    folders = {p.relative_to(CONFIGS).parts[0] for p in SHIPPED}
    assert folders <= {*STAGE_FOLDERS, "pipelines", "deepspeed"}, folders
    assert all(p.suffix in (".yaml", ".json") for p in SHIPPED)


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.parent.name in STAGE_FOLDERS],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_stage_config_validates_as_ue_validate_checks_it(path: Path, tmp_path: Path):
    pipeline = tmp_path / "one_stage.yaml"
    pipeline.write_text(yaml.safe_dump({"run_id": "shipped-check", "root": str(tmp_path / "runs"),
                                        "stages": [{"stage": path.parent.name, "config": str(path)}]}))
    pipe = load_pipeline(pipeline, check_files=False)  # its heads come from stages not in this pipeline
    assert [s.name for s in pipe.stages] == [path.parent.name]


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.parent.name == "pipelines"], ids=lambda p: p.name)
def test_every_pipeline_validates(path: Path):
    assert load_pipeline(path).stages


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.parent.name == "deepspeed"], ids=lambda p: p.name)
def test_every_deepspeed_config_is_json_a_finetune_config_can_name(path: Path):
    assert deepspeed_path(path.stem) == path
    assert "zero_optimization" in json.loads(path.read_text())
