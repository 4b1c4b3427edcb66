"""MLflow tracking of a pipeline run: a tiny pipeline logged to a local file store and read back with
MlflowClient (one pipeline run, a nested run per stage with its config and metrics), by `ue run` and
by `ue submit` (against a fake cluster that runs each job in-process), the readers of the finetune
history, the fit_heads table and the tune trials, and the errors without MLflow or a readable run root."""

from __future__ import annotations

import io
import json
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.pipeline import load_pipeline
from cluster.runner import StageFailed, run_embedded
from cluster.stages import STAGE_IMPLS
from cluster.submit import META_STAGE, submit_pipeline
from cluster.tracking import MlflowTracker, TrackingError, numbers, open_tracker
from jobs._common import parse_args
from tests.cluster.helpers import ue, write_pipeline
from ue.artifacts import Manifest, atomic_write_json
from ue.config import load_config

pytest.importorskip("mlflow")


def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file:{tmp_path / 'mlruns'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_a_pipeline_is_logged_and_its_metrics_read_back(tmp_path, monkeypatch):
    uri = _store(tmp_path, monkeypatch)
    path = write_pipeline(tmp_path / "p.yaml", "tracked", tmp_path / "runs", [
        {"stage": "toy_a", "config": {"message": "first"}},
        {"stage": "toy_b", "config": {"fail_times": 1}, "retries": 1}],
        tracking={"mlflow": {"uri": uri, "experiment": "toys"}})
    outcomes = run_embedded(load_pipeline(path), verbose=True, sleep=lambda s: None)
    assert [o.status for o in outcomes] == ["done", "done"]

    client = _client(uri)
    experiment = client.get_experiment_by_name("toys")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`ueray.kind` = 'pipeline'")
    assert (parent.info.run_name, parent.info.status) == ("tracked", "FINISHED")
    stages = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], "tags.`ueray.kind` = 'stage'")}
    assert set(stages) == {"toy_a", "toy_b"}
    for name, run in stages.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert run.data.tags["ueray.config_hash"] == Manifest(load_pipeline(path).layout).stage(name)["config_hash"]
    assert stages["toy_a"].data.params["message"] == "first" and stages["toy_b"].data.params["fail_times"] == "1"
    assert stages["toy_a"].data.metrics["attempt"] == 1.0 and stages["toy_b"].data.metrics["attempt"] == 2.0
    history = client.get_metric_history(stages["toy_b"].info.run_id, "seconds")
    assert len(history) == 1 and history[0].value > 0
    artifacts = [f.path for f in client.list_artifacts(stages["toy_a"].info.run_id)]
    assert artifacts == ["config.yaml"]

    # A failing stage in a rerun: logged as failed in the same pipeline run, which ends FAILED.
    failing = write_pipeline(tmp_path / "p.yaml", "tracked", tmp_path / "runs", [
        {"stage": "toy_a", "config": {"message": "first"}}, {"stage": "toy_c", "config": {"fail_times": 5}}],
        retries=0, tracking={"mlflow": {"uri": uri, "experiment": "toys"}})
    with pytest.raises(StageFailed):
        run_embedded(load_pipeline(failing), verbose=True, sleep=lambda s: None)
    (again,) = client.search_runs([experiment.experiment_id], "tags.`ueray.kind` = 'pipeline'")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FAILED"
    (toy_c,) = client.search_runs([experiment.experiment_id], "tags.`ueray.stage` = 'toy_c'")
    assert toy_c.info.status == "FAILED" and "fails on purpose" in toy_c.data.tags["ueray.error"]


class FakeCluster:
    """The part of ``ClusterClient`` that ``submit_pipeline`` uses; each job runs in-process at submit,
    from its command line as the job's driver would, and ends SUCCEEDED or FAILED."""

    address = "http://fake-head:8265"

    def __init__(self) -> None:
        self.status_of: dict[str, str] = {}

    def jobs(self, run_id: str | None = None) -> list:
        return []

    def submit(self, sid: str, entrypoint: str, runtime_env: dict, metadata: dict, resources: dict) -> str:
        impl = STAGE_IMPLS.get(metadata[META_STAGE])
        args = parse_args(shlex.split(entrypoint)[3 + len(impl.argv):], impl.name)
        try:
            impl.run_function()(load_config(impl.config_class(), args.config, overrides=args.overrides))
            self.status_of[sid] = "SUCCEEDED"
        except RuntimeError:
            self.status_of[sid] = "FAILED"
        return sid

    def follow(self, sid: str, write) -> None:
        write(f"{sid} ran\n")

    def status(self, sid: str) -> str:
        return self.status_of[sid]


def test_a_submitted_pipeline_is_logged_as_ue_run_logs_it(tmp_path, monkeypatch):
    from rich.console import Console

    uri = _store(tmp_path, monkeypatch)
    tracking = {"mlflow": {"uri": uri, "experiment": "cluster"}}
    console = Console(file=io.StringIO(), width=200)
    path = write_pipeline(tmp_path / "p.yaml", "sub", tmp_path / "runs", [
        {"stage": "toy_a", "config": {"message": "first"}},
        {"stage": "toy_b", "config": {"fail_times": 1}, "retries": 1}], tracking=tracking)
    outcomes = submit_pipeline(load_pipeline(path, check_files=False), FakeCluster(), console=console,
                               sleep=lambda s: None)
    assert [(o.status, o.attempts) for o in outcomes] == [("done", 1), ("done", 2)]

    client = _client(uri)
    experiment = client.get_experiment_by_name("cluster")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`ueray.kind` = 'pipeline'")
    assert (parent.info.run_name, parent.info.status) == ("sub", "FINISHED")
    stages = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], "tags.`ueray.kind` = 'stage'")}
    assert set(stages) == {"toy_a", "toy_b"}
    for name, run in stages.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert run.data.tags["ueray.config_hash"] == Manifest(load_pipeline(path).layout).stage(name)["config_hash"]
    assert stages["toy_a"].data.params["message"] == "first"
    # The metrics come from the manifest the jobs wrote: toy_b's second attempt succeeded.
    assert stages["toy_a"].data.metrics["attempt"] == 1.0 and stages["toy_b"].data.metrics["attempt"] == 2.0
    assert [f.path for f in client.list_artifacts(stages["toy_b"].info.run_id)] == ["config.yaml"]

    # A stage that fails on its last attempt: logged FAILED in the same pipeline run, which ends FAILED.
    failing = write_pipeline(tmp_path / "p.yaml", "sub", tmp_path / "runs", [
        {"stage": "toy_a", "config": {"message": "first"}}, {"stage": "toy_c", "config": {"fail_times": 5}}],
        retries=0, tracking=tracking)
    with pytest.raises(StageFailed):
        submit_pipeline(load_pipeline(failing, check_files=False), FakeCluster(), console=console,
                        sleep=lambda s: None)
    (again,) = client.search_runs([experiment.experiment_id], "tags.`ueray.kind` = 'pipeline'")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FAILED"
    (toy_c,) = client.search_runs([experiment.experiment_id], "tags.`ueray.stage` = 'toy_c'")
    assert toy_c.info.status == "FAILED" and "toy_c-1 FAILED" in toy_c.data.tags["ueray.error"]
    assert len(client.search_runs([experiment.experiment_id], "tags.`ueray.stage` = 'toy_a'")) == 1  # skipped


def test_submit_refuses_tracking_when_the_run_root_is_a_uri(tmp_path, monkeypatch, env):
    from rich.console import Console

    path = write_pipeline(tmp_path / "p.yaml", "r", "s3://bucket/runs", [{"stage": "toy_a"}],
                          tracking={"mlflow": {"uri": _store(tmp_path, monkeypatch)}})
    cluster = FakeCluster()
    with pytest.raises(TrackingError, match="s3://bucket/runs.* is a URI"):
        submit_pipeline(load_pipeline(path, check_files=False), cluster, console=Console(quiet=True))
    assert cluster.status_of == {}  # nothing was submitted
    # The command refuses it before it looks for a cluster (nothing listens at this address).
    proc = ue("submit", str(path), "--address", "http://127.0.0.1:9", env=env)
    assert proc.returncode == 2 and "is a URI" in proc.stderr + proc.stdout, proc.stderr


def test_a_run_directory_this_machine_does_not_see_gets_config_and_status_only(tmp_path, monkeypatch):
    from rich.console import Console

    class RemoteDisk(FakeCluster):
        def submit(self, sid: str, *args: object) -> str:  # the job writes to the cluster's disk, not ours
            self.status_of[sid] = "SUCCEEDED"
            return sid

    uri = _store(tmp_path, monkeypatch)
    console = Console(file=io.StringIO(), width=200)
    path = write_pipeline(tmp_path / "p.yaml", "far", tmp_path / "runs", [{"stage": "toy_a", "config": {
        "message": "m"}}], tracking={"mlflow": {"uri": uri}})
    submit_pipeline(load_pipeline(path, check_files=False), RemoteDisk(), console=console, sleep=lambda s: None)
    assert "run directory is not readable here" in console.file.getvalue()
    (run,) = _client(uri).search_runs([_client(uri).get_experiment_by_name("ueray").experiment_id],
                                      "tags.`ueray.stage` = 'toy_a'")
    assert run.info.status == "FINISHED" and run.data.params["message"] == "m" and set(run.data.metrics) == {"seconds"}


def test_finetune_epochs_fit_heads_table_and_tune_trials_become_metrics(tmp_path, monkeypatch):
    uri = _store(tmp_path, monkeypatch)
    pipe = load_pipeline(write_pipeline(tmp_path / "p.yaml", "r", tmp_path / "runs", [{"stage": "toy_a"}]))
    layout = pipe.layout
    atomic_write_json(layout.finetune_dir / "metrics.json", {"epochs": [
        {"epoch": 1, "train_loss": 0.7, "val_accuracy": 0.6}, {"epoch": 2, "train_loss": 0.4, "val_accuracy": 0.8}]})
    atomic_write_json(layout.stage_dir("fit_heads") / "metrics.json",
                      {"metrics": {"test": {"alien": {"roc_auc": 0.71, "name": "x"}, "msp": {"roc_auc": 0.65}}}})
    (layout.run_dir / "tune" / "alien").mkdir(parents=True)
    pq.write_table(pa.table({"trial": ["a", "b", "c"], "val_roc_auc": [0.6, 0.7, 0.65]}),
                   layout.run_dir / "tune" / "alien" / "trials.parquet")
    tracker = MlflowTracker(uri=uri, experiment="e", run_id="r")
    toy = pipe.stages[0]
    client = _client(uri)
    runs = {name: tracker.log_stage(pipe, SimpleNamespace(name=name, cfg=toy.cfg), status="FINISHED", seconds=1.0)
            for name in ("finetune", "fit_heads", "tune")}

    loss = client.get_metric_history(runs["finetune"], "epoch.train_loss")
    assert sorted((m.step, m.value) for m in loss) == [(1, 0.7), (2, 0.4)]
    table = client.get_run(runs["fit_heads"]).data.metrics
    assert (table["test.alien.roc_auc"], table["test.msp.roc_auc"]) == (0.71, 0.65)
    trials = client.get_metric_history(runs["tune"], "tune.alien.val_roc_auc")
    assert sorted((m.step, m.value) for m in trials) == [(0, 0.6), (1, 0.7), (2, 0.65)]
    assert [f.path for f in client.list_artifacts(runs["tune"], "tune/alien")] == ["tune/alien/trials.parquet"]
    assert [f.path for f in client.list_artifacts(runs["finetune"])] == ["metrics.json"]


def test_tracking_is_off_by_default_and_names_the_extra_when_mlflow_is_missing(tmp_path, monkeypatch):
    pipe = load_pipeline(write_pipeline(tmp_path / "p.yaml", "r", tmp_path, [{"stage": "toy_a"}]))
    assert pipe.config.tracking is None and open_tracker(pipe) is None
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    tracked = load_pipeline(write_pipeline(tmp_path / "q.yaml", "r", tmp_path, [{"stage": "toy_a"}],
                                           tracking={"mlflow": {"uri": "file:x"}}))
    with pytest.raises(TrackingError, match=r"pip install 'ueray\[tracking\]'"):
        run_embedded(tracked, verbose=True)
    assert not (tmp_path / "r" / "toy").exists()  # nothing ran


def test_numbers_keeps_finite_numeric_leaves_only():
    tree = {"rows": 3, "coverage": 0.5, "flag": True, "name": "x", "nan": float("nan"), "sub": {"k": 2, "l": [1]}}
    assert numbers(tree) == {"rows": 3.0, "coverage": 0.5, "sub.k": 2.0}
    assert json.dumps(numbers({"a b(c)": 1})) == '{"a b_c_": 1.0}'
