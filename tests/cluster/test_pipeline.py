"""Pipeline files: validation of everything at once, overrides, the run directory, shipped pipelines."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from cluster.pipeline import PipelineError, load_pipeline, split_overrides
from tests.cluster.helpers import ROOT, ue, write_pipeline

PIPELINES = sorted((ROOT / "jobs" / "configs" / "pipelines").glob("*.yaml"))


def _problems(path: Path, overrides=()) -> list[str]:
    with pytest.raises(PipelineError) as info:
        load_pipeline(path, overrides)
    return [str(p) for p in info.value.problems]


def test_validate_reports_three_mistakes_with_their_stage_and_key(tmp_path: Path, env: dict):
    pipeline = write_pipeline(tmp_path / "p.yaml", "bad", tmp_path, [
        {"stage": "toy_a", "retries": -1},                       # 1. pipeline level: a negative retry count
        {"stage": "toy_b", "config": {"sekonds": 1}},            # 2. stage config: a misspelt key
        {"stage": "toy_c", "overrides": ["fail_times=many"]},    # 3. stage override: a bad value
    ])
    proc = ue("validate", str(pipeline), env=env)
    assert proc.returncode == 2
    err = proc.stderr
    assert "3 problem(s)" in err
    assert "pipeline" in err and "stages.0.retries" in err
    assert "stages.1 toy_b" in err and "sekonds: unknown key" in err and "did you mean 'seconds'" in err
    assert "stages.2 toy_c" in err and "fail_times:" in err and "'many'" in err


def test_every_problem_is_found_even_when_the_pipeline_itself_is_broken(tmp_path: Path):
    pipeline = write_pipeline(tmp_path / "p.yaml", "bad/id", tmp_path, [
        {"stage": "toy_bb"},
        {"stage": "toy_a", "config": {"seconds": -1}},
        {"stage": "report", "config": "missing.yaml"},
    ])
    problems = _problems(pipeline, ["toy_c.seconds=1"])
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    assert "run_id: must be a plain folder name" in text
    assert "stages.0.stage: unknown stage 'toy_bb'" in text and "Did you mean" in text
    assert "[stages.1 toy_a]" in text and "(stages.1.config): seconds" in text
    assert "missing.yaml: cannot read config file" in text
    assert "toy_c: this stage is not in the pipeline" in text


def test_overrides_go_to_the_pipeline_or_to_one_stage(tmp_path: Path):
    assert split_overrides(["run_id=x", "toy_a.seconds=2", "toy_a.run.force=true", "root=a.b"]) == (
        ["run_id=x", "root=a.b"], {"toy_a": ["seconds=2", "run.force=true"]})
    pipeline = write_pipeline(tmp_path / "p.yaml", "p1", Path("rel-runs"), [{"stage": "toy_a"}, {"stage": "toy_b"}])
    pipe = load_pipeline(pipeline, ["run_id=other", "toy_b.seconds=2.5"])
    assert pipe.run_id == "other"
    a, b = (s.cfg for s in pipe.stages)
    assert (a.seconds, b.seconds) == (0.0, 2.5)
    # Every stage shares the pipeline's run directory, with an absolute root (jobs run elsewhere).
    assert a.run.run_id == b.run.run_id == "other"
    assert Path(a.run.root).is_absolute() and Path(a.run.root) == Path("rel-runs").resolve()


def test_stage_files_are_relative_to_the_pipeline_and_lose_their_run_section(tmp_path: Path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "a.yaml").write_text("seconds: 3\nrun: {run_id: someone-else, root: /elsewhere}\n")
    pipeline = write_pipeline(tmp_path / "p.yaml", "p2", tmp_path, [
        {"stage": "toy_a", "config": "stages/a.yaml", "overrides": ["message=hi"], "retries": 4}])
    (stage,) = load_pipeline(pipeline).stages
    assert (stage.cfg.seconds, stage.cfg.message, stage.retries) == (3.0, "hi", 4)
    assert (stage.cfg.run.run_id, stage.cfg.run.root) == ("p2", str(tmp_path))


def test_order_duplicates_and_secrets_are_rejected(tmp_path: Path):
    text = "\n".join(_problems(write_pipeline(tmp_path / "p.yaml", "p3", tmp_path, [
        {"stage": "report"}, {"stage": "fit_heads"}, {"stage": "toy_a"}, {"stage": "toy_a"}],
        submit={"env_vars": {"RAY_AUTH_TOKEN": "x"}})))
    assert "toy_a appear more than once" in text
    assert "submit.env_vars: must not pass RAY_AUTH_TOKEN" in text
    order = "\n".join(_problems(write_pipeline(tmp_path / "q.yaml", "p3", tmp_path, [
        {"stage": "report"}, {"stage": "fit_heads"}])))
    assert "must keep the order" in order


def test_backoff_grows_and_is_capped(tmp_path: Path):
    pipe = load_pipeline(write_pipeline(tmp_path / "p.yaml", "p4", tmp_path, [{"stage": "toy_a"}],
                                        backoff_s=2, backoff_factor=3, max_backoff_s=10))
    assert [pipe.config.backoff(k) for k in (1, 2, 3)] == [2, 6, 10]


def _stages_available(path: Path) -> list[str]:
    import yaml

    stages = [s["stage"] for s in yaml.safe_load(path.read_text())["stages"]]
    return [s for s in stages if importlib.util.find_spec(f"jobs.schemas.{s}") is None]


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_shipped_pipelines_validate(path: Path, monkeypatch: pytest.MonkeyPatch):
    if not os.environ.get("UE_DATA_DIR"):  # their corpus paths name $UE_DATA_DIR; default as in .ci/run
        monkeypatch.setenv("UE_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    missing = _stages_available(path)
    if missing:
        pytest.skip(f"stage config models not written yet: {', '.join(missing)}")
    pipe = load_pipeline(path)
    assert [s.name for s in pipe.stages][-1] == "report"
