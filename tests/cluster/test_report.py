"""The report: metrics table, plots and files, checked against ue.metrics on the same features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from jobs.report import run as run_report
from jobs.schemas.report import Config
from tests.cluster.helpers import ue, write_pipeline
from tests.cluster.rundir import HEADS, make_run_dir
from ue.artifacts import RunLayout
from ue.config import ConfigError, load_config
from ue.features import column, error_indicator
from ue.metrics import aurc, roc_auc
from ue.report import MODEL_ROW, build_report, read_features, roc_points

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_files_and_numbers(tmp_path: Path):
    layout = make_run_dir(tmp_path, "r1")
    written = build_report(layout, split="test")

    out = layout.report_dir
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.html", "metrics.json", "risk_coverage.png",
                                                "reliability.png", "roc.png"}
    assert all((out / f"{p}.png").read_bytes()[:8] == PNG_MAGIC for p in ("risk_coverage", "reliability", "roc"))
    rows = {r["method"]: r for r in written["rows"]}
    assert list(rows) == [MODEL_ROW, *sorted(HEADS)]

    features = read_features(layout, "test")
    errors = error_indicator(features)
    top = softmax(column(features, "logits").astype(np.float64), axis=1).max(1)
    assert 0 < errors.sum() < len(errors)
    # msp is 1 - max prob: the same score as the model row, so the same numbers.
    for name in (MODEL_ROW, "msp"):
        assert rows[name]["roc_auc"] == pytest.approx(roc_auc(1 - top, errors))
        assert rows[name]["aurc"] == pytest.approx(aurc(1 - top, errors))
    assert rows["entropy"]["confidence"] == "max_prob" and rows["msp"]["confidence"] == "1-U"

    markdown = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for name in rows:
        assert name in markdown and name in html
    assert f"{rows['msp']['roc_auc'] * 100:.2f}" in markdown
    assert "![Risk-coverage](risk_coverage.png)" in markdown and 'src="reliability.png"' in html
    assert json.loads((out / "metrics.json").read_text())["rows"][1]["method"] == "entropy"


def test_report_stage_keeps_its_config_and_marks_done(tmp_path: Path):
    layout = make_run_dir(tmp_path, "r2")
    cfg = load_config(Config, data={"run": {"root": str(tmp_path), "run_id": "r2"}, "heads": ["msp"]})
    outputs = run_report(cfg)
    assert Path(outputs["html"]).exists()
    assert (layout.report_dir / "config.yaml").exists()  # written by run_stage, not wiped by the report
    manifest = json.loads(layout.manifest.read_text())
    assert manifest["stages"]["report"]["status"] == "done"
    assert "entropy" not in (layout.report_dir / "report.md").read_text()


def test_report_says_what_is_missing(tmp_path: Path):
    layout = make_run_dir(tmp_path, "r3")
    with pytest.raises(FileNotFoundError, match="no saved head.*alien"):
        build_report(layout, heads=["alien"])
    with pytest.raises(FileNotFoundError, match="extract stage"):
        build_report(RunLayout(tmp_path, "empty"))
    with pytest.raises(ConfigError, match="n_bins"):
        load_config(Config, data={"n_bins": 1})


def test_roc_points_hand_computed():
    fpr, tpr = roc_points(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 1, 0, 0]))
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])


def test_report_only_pipeline_via_ue_run(tmp_path: Path, env: dict):
    make_run_dir(tmp_path / "runs", "r4")
    pipeline = write_pipeline(tmp_path / "p.yaml", "r4", tmp_path / "runs", [{"stage": "report"}])
    proc = ue("run", str(pipeline), env=env)
    html = tmp_path / "runs" / "r4" / "report" / "report.html"
    assert proc.returncode == 0, proc.stderr
    assert f"report: {html}" in proc.stdout

    rebuilt = ue("report", "r4", "title=Second look", "split=val", "--root", str(tmp_path / "runs"), env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"report: {html}" in rebuilt.stdout and "<h1>Second look</h1>" in html.read_text()
