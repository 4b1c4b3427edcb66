"""Tables the CLI prints: runs, a run's stages, cluster jobs, validation problems.

Only json, pathlib and rich: ``ue status`` reads the manifest without importing pydantic or Ray.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

STATUS_STYLE = {"done": "green", "SUCCEEDED": "green", "running": "cyan", "RUNNING": "cyan", "PENDING": "cyan",
                "failed": "red", "FAILED": "red", "STOPPED": "yellow", "stale": "yellow",
                "interrupted": "yellow"}


def _styled(status: str) -> str:
    style = STATUS_STYLE.get(status)
    return f"[{style}]{escape(status)}[/]" if style else escape(status)


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


def _seconds(value: float | None) -> str:
    return f"{value:.1f}s" if value is not None else ""


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The run's manifest.json, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stages_table(manifest: dict[str, Any]) -> Table:
    """One row per stage of a run, in pipeline order when the manifest records it."""
    stages: dict[str, Any] = manifest.get("stages", {})
    order = manifest.get("pipeline", {}).get("stages") or list(stages)
    table = Table(title=f"run {manifest.get('run_id', '?')}", title_justify="left")
    for column in ("stage", "status", "time", "finished", "config", "error"):
        table.add_column(column, overflow="fold")
    for name in order:
        entry = stages.get(name, {})
        table.add_row(name, _styled(entry.get("status", "pending")), _seconds(entry.get("seconds")),
                      _when(entry.get("finished")), entry.get("config_hash", ""),
                      # a done stage may still carry the error of an earlier, failed attempt
                      "" if entry.get("status") == "done" else escape(entry.get("error", "")))
    return table


def runs_table(root: Path) -> Table:
    """Every run under ``root`` with how many of its stages are done."""
    table = Table(title=f"runs under {root}", title_justify="left")
    for column in ("run", "done", "last stage", "status", "updated"):
        table.add_column(column)
    manifests = sorted(root.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    for path in manifests:
        manifest = read_manifest(path.parent) or {}
        stages = manifest.get("stages", {})
        planned = manifest.get("pipeline", {}).get("stages") or list(stages)
        done = sum(1 for s in stages.values() if s.get("status") == "done")
        last = max(stages, key=lambda s: stages[s].get("started", 0), default="")
        table.add_row(path.parent.name, f"{done}/{len(planned)}", last,
                      _styled(stages.get(last, {}).get("status", "")), _when(path.stat().st_mtime))
    return table


def jobs_table(jobs: list[Any], title: str) -> Table:
    """Ray Jobs (``JobDetails``) with their ueray run, stage and attempt."""
    table = Table(title=title, title_justify="left")
    for column in ("submission id", "status", "run", "stage", "attempt", "started", "time"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        meta = job.metadata or {}
        start, end = job.start_time, job.end_time
        took = ((end or time.time() * 1000) - start) / 1000 if start else None
        table.add_row(job.submission_id or job.job_id or "", _styled(str(job.status)), meta.get("ueray_run_id", ""),
                      meta.get("ueray_stage", ""), meta.get("ueray_attempt", ""),
                      _when(start / 1000 if start else None), _seconds(took))
    return table
