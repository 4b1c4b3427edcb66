"""A run's report: how well each uncertainty score finds the model's errors, as tables and plots.

``build_report`` reads the cached features of one split (``features/split=<split>/``) and every
saved head (``heads/<name>/``), scores the split with each head and with the model's own maximum
softmax probability, and writes ``report/``: ``report.md``, ``report.html`` and three PNGs
(risk-coverage, reliability, ROC). Metrics and conventions are those of ``ue.metrics``: scores are
higher = more uncertain, errors are ``1[pred != label]`` (METHODS.md, "Metrics"). Matplotlib runs
with the Agg backend, so no display is needed.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import softmax

from ue.artifacts import RunLayout, atomic_write_json, atomic_write_text, read_json
from ue.evaluation import evaluate_scores
from ue.features import column, error_indicator
from ue.metrics import risk_coverage_curve

MODEL_ROW = "model (max prob)"
PLOTS = {"risk_coverage": "Risk-coverage", "reliability": "Reliability", "roc": "ROC (error detection)"}


@dataclass(frozen=True)
class ScoredMethod:
    """One uncertainty score over the split: ``scores`` (n,), higher = more uncertain, and, when the
    score estimates P(error), ``confidence = 1 - scores`` for calibration plots."""

    name: str
    scores: np.ndarray
    confidence: np.ndarray | None


def read_features(layout: RunLayout, split: str) -> Any:
    """The split's feature table (pyarrow); raises FileNotFoundError saying which stage makes it."""
    import pyarrow.parquet as pq

    directory = layout.features_split_dir(split)
    if not any(directory.glob("*.parquet")):
        raise FileNotFoundError(f"no features in {directory}; the extract stage writes them")
    return pq.read_table(directory)


def score_methods(features: Any, head_dirs: list[Path]) -> list[ScoredMethod]:
    """The model's max-prob score followed by every saved head's score on ``features``."""
    from ue.heads import load_head

    probs = softmax(column(features, "logits", who="the report").astype(np.float64), axis=1)
    top = probs.max(axis=1)
    methods = [ScoredMethod(MODEL_ROW, 1.0 - top, top)]
    for directory in head_dirs:
        head = load_head(directory)
        scores = head.uncertainty(features)
        methods.append(ScoredMethod(directory.name, scores, 1.0 - scores if head.error_probability else None))
    return methods


def metric_rows(methods: list[ScoredMethod], features: Any, n_bins: int) -> list[dict[str, Any]]:
    """Every metric of ``ue.evaluation.evaluate_scores`` per method (the numbers ``fit_heads`` reports),
    with undefined values (no errors, or only errors) as None so the JSON stays valid."""
    cols = {name: column(features, name, who="the report") for name in ("pred", "label", "logits")}
    rows = []
    for m in methods:
        metrics = evaluate_scores(m.scores, **cols, error_probability=m.confidence is not None, n_bins=n_bins)
        rows.append({"method": m.name, **{k: _finite(v) for k, v in metrics.items()}})
    return rows


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not np.isfinite(value) else value


def roc_points(scores: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of flagging errors by score, one point per distinct
    threshold, starting at (0, 0)."""
    order = np.argsort(-scores, kind="stable")
    s, e = scores[order], errors[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp, fp = np.cumsum(e)[last_of_tie], np.cumsum(1 - e)[last_of_tie]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def _plot_risk_coverage(ax: Any, methods: list[ScoredMethod], errors: np.ndarray) -> None:
    for m in methods:
        ax.plot(*risk_coverage_curve(m.scores, errors), label=m.name)
    ax.plot(*risk_coverage_curve(errors.astype(float), errors), "k:", label="oracle")
    ax.axhline(errors.mean(), color="grey", lw=0.8, ls="--", label="random")
    ax.set(xlabel="coverage (fraction accepted, most certain first)", ylabel="risk (error rate of accepted)")


def _plot_reliability(ax: Any, methods: list[ScoredMethod], errors: np.ndarray, n_bins: int) -> None:
    edges = np.linspace(0, 1, n_bins + 1)
    for m in (m for m in methods if m.confidence is not None):
        conf = np.clip(m.confidence, 0, 1)
        bins = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
        count = np.bincount(bins, minlength=n_bins)
        hit = np.bincount(bins, weights=1 - errors, minlength=n_bins)
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins)
        used = count > 0
        ax.plot(mean_conf[used] / count[used], hit[used] / count[used], "o-", label=m.name)
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    ax.set(xlabel="confidence (1 - uncertainty)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))


def _plot_roc(ax: Any, methods: list[ScoredMethod], errors: np.ndarray) -> None:
    for m in methods:
        ax.plot(*roc_points(m.scores, errors), label=m.name)
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set(xlabel="false positive rate (correct items flagged)", ylabel="true positive rate (errors flagged)")


def save_plots(directory: Path, methods: list[ScoredMethod], errors: np.ndarray, n_bins: int) -> list[str]:
    """Write the three PNGs into ``directory``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    draw = {"risk_coverage": lambda ax: _plot_risk_coverage(ax, methods, errors),
            "reliability": lambda ax: _plot_reliability(ax, methods, errors, n_bins),
            "roc": lambda ax: _plot_roc(ax, methods, errors)}
    names = []
    for key, title in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
        draw[key](ax)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(directory / f"{key}.png")
        plt.close(fig)
        names.append(f"{key}.png")
    return names


def _fmt(value: float | None, scale: float = 100.0) -> str:
    return "-" if value is None else f"{value * scale:.2f}"


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "ROC-AUC x100 (higher better)", "AURC x100 (lower better)", "PRR x100 (higher better)",
              "ECE x100 (lower better)", "confidence for ECE"]
    body = [[r["method"], _fmt(r["roc_auc"]), _fmt(r["aurc"]), _fmt(r["prr"]), _fmt(r["ece"]), r["confidence"]]
            for r in rows]
    return header, body


def _stage_summaries(layout: RunLayout) -> list[tuple[str, dict[str, Any]]]:
    """Scalar results other stages left behind: fine-tuning metrics, best tuning trials, scoring counts."""
    found = [("finetune", layout.finetune_dir / "metrics.json")]
    found += [(f"tune/{p.parent.name}", p) for p in sorted((layout.run_dir / "tune").glob("*/best.json"))]
    found.append(("score", layout.scores_dir / "summary.json"))
    out = []
    for name, path in found:
        if path.exists():
            doc = read_json(path)
            scalars = {k: v for k, v in doc.items() if isinstance(v, int | float | str | bool)} if isinstance(
                doc, dict) else {}
            out.append((name, scalars or {"value": json.dumps(doc)[:200]}))
    return out


def render_markdown(title: str, summary: dict[str, Any], rows: list[dict[str, Any]], plots: list[str],
                    extras: list[tuple[str, dict[str, Any]]]) -> str:
    header, body = _table(rows)
    lines = [f"# {title}", "", _summary_line(summary), "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += ["", *[f"![{PLOTS[p[:-4]]}]({p})" for p in plots]]
    for name, values in extras:
        lines += ["", f"## {name}", "", *[f"- {k}: {v}" for k, v in values.items()]]
    return "\n".join(lines) + "\n"


def _summary_line(summary: dict[str, Any]) -> str:
    return (f"{summary['n']} examples; accuracy {summary['accuracy']:.4f}, error rate "
            f"{summary['error_rate']:.4f}; oracle AURC x100 {summary['oracle_aurc'] * 100:.2f}. Scores are "
            "higher = more likely wrong; ECE judges 1 - U for probability heads, else the model's max prob.")


def render_html(title: str, summary: dict[str, Any], rows: list[dict[str, Any]], plots: list[str],
                extras: list[tuple[str, dict[str, Any]]]) -> str:
    esc = html.escape
    header, body = _table(rows)
    table = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in body)
    images = "".join(f'<figure><img src="{esc(p)}" alt="{esc(PLOTS[p[:-4]])}"></figure>' for p in plots)
    sections = "".join(
        f"<h2>{esc(name)}</h2><ul>" + "".join(f"<li>{esc(str(k))}: {esc(str(v))}</li>" for k, v in values.items())
        + "</ul>" for name, values in extras)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
             "figure{display:inline-block;margin:0 1em 1em 0}img{max-width:520px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style>"
            f"</head><body><h1>{esc(title)}</h1><p>{esc(_summary_line(summary))}</p><table>{table}</table>"
            f"{images}{sections}</body></html>\n")


def build_report(layout: RunLayout, *, split: str = "test", heads: list[str] | None = None, n_bins: int = 15,
                 title: str | None = None) -> dict[str, Any]:
    """Write ``<run>/report/`` for ``split``; returns the paths written and the metric rows.

    Args:
        layout: the run directory.
        split: which cached split to evaluate (``test`` for final numbers; ``val`` while iterating).
        heads: names under ``heads/`` to include; None includes every saved head.
        n_bins: equal-width bins of ECE and the reliability plot.
        title: the report's title; default "Run <run_id>: <split> split".

    Raises:
        FileNotFoundError: no features for the split, or a named head that was not saved.
    """
    features = read_features(layout, split)
    saved = sorted(p.parent for p in (layout.run_dir / "heads").glob("*/head.json"))
    if heads is not None:
        missing = sorted(set(heads) - {p.name for p in saved})
        if missing:
            raise FileNotFoundError(f"no saved head(s) {', '.join(missing)} under {layout.run_dir / 'heads'}")
        saved = [p for p in saved if p.name in heads]
    errors = error_indicator(features, who="the report")
    methods = score_methods(features, saved)
    rows = metric_rows(methods, features, n_bins)
    summary = {k: rows[0][k] for k in ("n", "accuracy", "error_rate", "oracle_aurc")}
    extras = _stage_summaries(layout)
    title = title or f"Run {layout.run_id}: {split} split"
    out = layout.report_dir
    out.mkdir(parents=True, exist_ok=True)
    # File by file, not a directory swap: the stage's config.yaml lives in the same folder.
    with tempfile.TemporaryDirectory(prefix=".plots.", dir=out) as tmp:
        plots = save_plots(Path(tmp), methods, errors, n_bins)
        for name in plots:
            os.replace(Path(tmp) / name, out / name)
    atomic_write_text(out / "report.md", render_markdown(title, summary, rows, plots, extras))
    atomic_write_text(out / "report.html", render_html(title, summary, rows, plots, extras))
    atomic_write_json(out / "metrics.json", {"split": split, "summary": summary, "rows": rows})
    return {"markdown": str(out / "report.md"), "html": str(out / "report.html"),
            "plots": [str(out / p) for p in plots], "rows": rows}
