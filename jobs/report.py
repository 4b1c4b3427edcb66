"""Report stage: metrics table and risk-coverage / reliability / ROC plots of a run (``ue.report``).

Reads ``features/split=<split>/`` and every ``heads/<name>/`` of the run and writes ``report/``
(report.md, report.html, PNGs, metrics.json). No Ray: it is a few seconds of NumPy and matplotlib.

    python -m jobs.report run.root=runs run.run_id=demo split=test
"""

from __future__ import annotations

from typing import Any

from jobs._common import job_main, run_stage
from jobs.schemas.report import Config
from ue.artifacts import RunLayout
from ue.report import build_report


def run(cfg: Config) -> dict[str, Any]:
    """Build the report of ``cfg.run``; returns the paths written."""

    def body(layout: RunLayout) -> dict[str, Any]:
        written = build_report(layout, split=cfg.split, heads=cfg.heads, n_bins=cfg.n_bins, title=cfg.title)
        return {"markdown": written["markdown"], "html": written["html"], "plots": written["plots"]}

    return run_stage("report", cfg, body)


if __name__ == "__main__":
    job_main(Config, run)
