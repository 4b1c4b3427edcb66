"""Log a pipeline run to MLflow: one MLflow run per pipeline run, a nested run per stage.

Enabled by the pipeline key ``tracking: {mlflow: {uri, experiment}}``; off by default, and MLflow is
imported only then (``pip install 'ueray[tracking]'``). After each stage the runner ran, its nested
run gets the stage's config as params (and ``config.yaml``), and as metrics the numbers the stage
wrote: the numeric fields of its manifest outputs (the score summary, tune's best trials), the
finetune history one step per epoch, the fit_heads table (``<split>.<head>.<metric>``) and each tune
search's trials (one step per trial); the report folder, the metrics files and the trials tables
become artifacts. A rerun of the same pipeline run adds to the same MLflow run.

The stages' own files are the source, read after the stage, so every stage is tracked the same way
whether it trained with Ray Train, searched with Ray Tune or did neither; Ray's per-trial MLflow
callbacks would cover only the Tune stage and log every trial as a run of its own.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cluster.pipeline import Pipeline, PlannedStage

INSTALL_HINT = "pip install 'ueray[tracking]'"
PARAM_CHARS = 500
BATCH = 900
"""Metrics per ``log_batch`` call (MLflow takes at most 1,000)."""


class TrackingError(RuntimeError):
    """Tracking is configured but cannot start (MLflow missing, store unusable)."""


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) of every leaf of nested mappings; lists stay leaves."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], tree


def numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of ``tree`` (booleans excluded), keyed by dotted path."""
    return {_key(f"{prefix}{k}"): float(v) for k, v in flatten(tree)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _key(name: str) -> str:
    """An MLflow-safe metric/param name (letters, digits, ``_ - . / `` and space)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


class MlflowTracker:
    """Writes one pipeline run and its stages to an MLflow tracking store.

    Args:
        uri: tracking URI, e.g. ``file:/path/mlruns`` or ``http://mlflow:5000``.
        experiment: experiment name (created when missing).
        run_id: the pipeline's run id; the MLflow run is found again by it (tag ``ueray.run_id``).
    """

    def __init__(self, *, uri: str, experiment: str, run_id: str) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TrackingError(f"tracking.mlflow is set but MLflow is not installed: {INSTALL_HINT}") from None
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 refuses file stores unless asked; a pipeline naming one has asked.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.parent = self._parent_run(run_id)
        except Exception as exc:  # an unreachable server or unusable store, before any stage ran
            raise TrackingError(f"tracking.mlflow: cannot use the store at {uri}: {exc}") from exc

    def _parent_run(self, run_id: str) -> str:
        runs = self.client.search_runs([self.experiment_id], f"tags.`ueray.run_id` = '{run_id}' and "
                                       "tags.`ueray.kind` = 'pipeline'", max_results=1)
        if runs:
            self.client.update_run(runs[0].info.run_id, status="RUNNING")
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=run_id,
                                     tags={"ueray.run_id": run_id, "ueray.kind": "pipeline"})
        return run.info.run_id

    def log_stage(self, pipe: Pipeline, stage: PlannedStage, *, status: str, seconds: float,
                  error: str | None = None) -> str:
        """A nested run for ``stage`` with its config, metrics and artifacts; returns its MLflow id."""
        from mlflow.entities import Metric, Param

        from ue.config import stage_hash

        tags = {"mlflow.parentRunId": self.parent, "ueray.run_id": pipe.run_id, "ueray.stage": stage.name,
                "ueray.kind": "stage", "ueray.config_hash": stage_hash(stage.cfg)}
        if error:
            tags["ueray.error"] = error[:PARAM_CHARS]
        run = self.client.create_run(self.experiment_id, run_name=stage.name, tags=tags).info.run_id
        config = {k: v for k, v in flatten(stage.cfg.model_dump(mode="json")) if not k.startswith("run.")}
        params = [Param(_key(k), (v if isinstance(v, str) else json.dumps(v))[:PARAM_CHARS]) for k, v in config.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run, params=params[i:i + 100])
        now = int(time.time() * 1000)
        series = [Metric(k, v, now, step) for k, v, step in self._metrics(pipe, stage, seconds)]
        for i in range(0, len(series), BATCH):
            self.client.log_batch(run, metrics=series[i:i + BATCH])
        for path, folder in self._artifacts(pipe, stage):
            (self.client.log_artifacts if path.is_dir() else self.client.log_artifact)(run, str(path), folder)
        self.client.set_terminated(run, status=status)
        return run

    def finish(self, status: str) -> None:
        """End the pipeline's MLflow run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        self.client.set_terminated(self.parent, status=status)

    def _metrics(self, pipe: Pipeline, stage: PlannedStage, seconds: float) -> Iterator[tuple[str, float, int]]:
        from ue.artifacts import Manifest

        layout = pipe.layout
        yield "seconds", float(seconds), 0
        outputs = (Manifest(layout).stage(stage.name) or {}).get("outputs", {})
        for key, value in numbers(outputs).items():
            yield key, value, 0
        if stage.name == "finetune":
            history = _json(layout.finetune_dir / "metrics.json").get("epochs", [])
            for k, epoch in enumerate(history):
                step = int(epoch.get("epoch", k))
                for key, value in numbers({k2: v for k2, v in epoch.items() if k2 != "epoch"}, "epoch.").items():
                    yield key, value, step
        elif stage.name == "fit_heads":
            for key, value in numbers(_json(layout.stage_dir("fit_heads") / "metrics.json").get("metrics", {})).items():
                yield key, value, 0
        elif stage.name == "tune":
            yield from _trials(layout.run_dir / "tune")

    def _artifacts(self, pipe: Pipeline, stage: PlannedStage) -> Iterator[tuple[Path, str | None]]:
        layout = pipe.layout
        candidates = [(layout.stage_dir(stage.name) / "config.yaml", None),
                      (layout.finetune_dir / "metrics.json", None) if stage.name == "finetune" else None,
                      (layout.stage_dir("fit_heads") / "metrics.json", None) if stage.name == "fit_heads" else None,
                      (layout.scores_dir / "summary.json", None) if stage.name == "score" else None,
                      (layout.report_dir, "report") if stage.name == "report" else None]
        candidates += [(p, f"tune/{p.parent.name}") for p in sorted((layout.run_dir / "tune").glob("*/trials.parquet"))
                       ] if stage.name == "tune" else []
        for item in filter(None, candidates):
            if item[0].exists():
                yield item


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _trials(tune_dir: Path) -> Iterator[tuple[str, float, int]]:
    """Each search's trials, one step per trial: its numeric columns as ``tune.<search>.<column>``."""
    import pyarrow.parquet as pq

    for path in sorted(tune_dir.glob("*/trials.parquet")):
        for step, row in enumerate(pq.read_table(path).to_pylist()):
            for key, value in numbers(row, f"tune.{path.parent.name}.").items():
                yield key, value, step


def track_stage(tracker: MlflowTracker | None, pipe: Pipeline, stage: PlannedStage, warn: Callable[[str], None], *,
                status: str, seconds: float = 0.0, error: str | None = None) -> None:
    """Log a stage that ended (no-op without a tracker); a tracking failure goes to ``warn`` as rich
    markup and is never raised: the stage's own outcome is what the caller reports."""
    if tracker is None:
        return
    try:
        tracker.log_stage(pipe, stage, status=status, seconds=seconds, error=error)
    except Exception as exc:
        warn(f"[yellow]not tracked[/] ({_escape(f'{type(exc).__name__}: {exc}')})")


def end_tracking(tracker: MlflowTracker | None, status: str, warn: Callable[[str], None]) -> None:
    """End the pipeline's MLflow run (no-op without a tracker); a failure goes to ``warn``, never raised."""
    if tracker is None:
        return
    try:
        tracker.finish(status)
    except Exception as exc:
        warn(f"[yellow]tracking: could not end the MLflow run[/] ({_escape(str(exc))})")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def open_tracker(pipe: Pipeline) -> MlflowTracker | None:
    """The tracker a pipeline asks for, or None when ``tracking`` is unset."""
    tracking = pipe.config.tracking
    if tracking is None or tracking.mlflow is None:
        return None
    return MlflowTracker(uri=tracking.mlflow.uri, experiment=tracking.mlflow.experiment, run_id=pipe.run_id)
