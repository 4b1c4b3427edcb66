"""The quality study: the whole pipeline over datasets x seeds, and ``docs/results.md`` generated from it.

    UE_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/study.py benchmarks/study.yaml
    .venv/bin/python benchmarks/study.py benchmarks/study.yaml --render-only   # rewrite the page only

A config with a ``qa`` section (``benchmarks/study_qa.yaml``) runs the QA study of ``study_qa.py``
instead, which writes only its own marked section of the page; this study's render keeps such
sections as they are.

For every dataset and seed, one pipeline (``<root>/pipelines/<dataset>-s<seed>.yaml``) runs through
``ue run``: LoRA fine-tune of MiniLM -> feature extraction -> every head at its defaults, its
calibrated variants and the ALIEN ablations (``fit_heads``) -> the ALIEN and AdUE paper grids
(``tune``, selected on val only, refitted). ``ue run`` skips stages already done with the same
config, so a rerun after a crash or an edit redoes only what changed.

Then, per run, every saved head is scored on the cached test features with the report's own code
(``ue.report.score_methods`` / ``metric_rows``, the numbers of ``ue report``), and the accept/abstain
decision of ``accept`` is calibrated on val (``ue.scoring.calibrate``) and applied to test. The page
gives mean +- std over seeds of ROC-AUC, AURC, PRR and ECE (x100) per dataset, the average rank,
the configuration each search chose per seed, the accept result, wall times, and a check of the
issue's targets that says plainly where they are missed. Nothing in it is written by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import study_qa
import yaml
from pydantic import Field
from study_qa import marked_tail

from ue.artifacts import Manifest, RunLayout, atomic_write_bytes
from ue.config import ConfigModel, load_config
from ue.config.paths import data_root
from ue.features import error_indicator
from ue.heads import load_head
from ue.metrics import ece, roc_auc
from ue.metrics.tokens import entity_f1, sentence_level
from ue.report import MODEL_ROW, metric_rows, read_features, score_methods
from ue.scoring import calibrate

REPO = Path(__file__).resolve().parents[1]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
METRICS = {"roc_auc": ("ROC-AUC", "max"), "aurc": ("AURC", "min"), "prr": ("PRR", "max"), "ece": ("ECE", "min")}
SEARCHES = {"alien_paper": "alien", "adue_paper": "adue"}


class DatasetSpec(ConfigModel):
    """One dataset of the study (a folder under $UE_DATA_DIR)."""

    name: str
    splits: dict[str, str]
    val_from_train: float | None = None
    max_length: int = 64
    target_error: float | None = Field(None, description="This dataset's accept target; default accept.target_error.")
    task: Literal["sequence_classification", "token_classification"] = "sequence_classification"
    num_labels: int = 2
    train_rows: int | None = Field(None, description="Training rows for this dataset; default the study's.")
    epochs: int | None = Field(None, description="Fine-tune epochs for this dataset; default the study's.")
    seeds: list[int] | None = Field(None, description="This dataset's seeds; default the study's.")
    lora_targets: list[str] = Field(default_factory=lambda: ["query", "value"])

    def rows(self, study: StudyConfig) -> int:
        return self.train_rows or study.train_rows

    def n_epochs(self, study: StudyConfig) -> int:
        return self.epochs or study.epochs

    def seed_list(self, study: StudyConfig) -> list[int]:
        return self.seeds or study.seeds


class AcceptSpec(ConfigModel):
    """The accept/abstain decision checked on test: ``head`` thresholded on val."""

    head: str = "alien_beta"
    target_error: float = 0.1
    delta: float = 0.1
    min_accepted: int = 50


class StudyConfig(ConfigModel):
    """benchmarks/study.yaml."""

    root: str = Field("runs/study", description="Run directories (relative to the repository).")
    output: str = Field("docs/results.md", description="The generated page; plots go to <stem>/ beside it.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    train_rows: int = 3000
    epochs: int = 1
    datasets: list[DatasetSpec]
    accept: AcceptSpec = Field(default_factory=AcceptSpec)


def head_entries(seed: int) -> list[dict[str, Any]]:
    """fit_heads: every head at its defaults, calibrated variants, and the ALIEN ablations of METHODS.md
    (the default ALIEN with a loss term removed, or a random init)."""
    trained = {"seed": seed}
    return [
        {"name": "msp"}, {"name": "entropy"}, {"name": "temperature"}, {"name": "mahalanobis"},
        {"name": "relative_mahalanobis"}, {"name": "adue", "params": trained}, {"name": "alien", "params": trained},
        {"name": "msp", "calibrate": "beta"}, {"name": "mahalanobis", "calibrate": "platt"},
        {"name": "adue", "params": trained, "calibrate": "beta"},
        {"name": "alien", "params": trained, "calibrate": "beta"},
        {"name": "alien", "params": trained, "calibrate": "platt"},
        {"name": "alien", "params": trained, "calibrate": "isotonic"},
        {"name": "alien", "params": {**trained, "alpha": 0.0, "beta": 0.0}, "save_as": "ablation_bce"},
        {"name": "alien", "params": {**trained, "alpha": 0.0}, "save_as": "ablation_bce_l2sp"},
        {"name": "alien", "params": {**trained, "beta": 0.0}, "save_as": "ablation_bce_reg"},
        {"name": "alien", "params": {**trained, "init": "random"}, "save_as": "ablation_random_init"},
    ]


def head_keys() -> list[str]:
    """Folders under heads/ that the study reads: fit_heads' entries, then the searches' refits."""
    keys = [e.get("save_as") or (f"{e['name']}_{e['calibrate']}" if "calibrate" in e else e["name"])
            for e in head_entries(0)]
    return keys + list(SEARCHES)


def _setup(study: StudyConfig) -> str:
    """"LoRA (query/value), 1 epoch(s) on 3,000 training rows, seeds 0, 1 (cola: 3 epoch(s) ...)"."""
    def one(ds: DatasetSpec) -> str:
        return (f"LoRA r 8 on {'/'.join(ds.lora_targets)}, {ds.n_epochs(study)} epoch(s) on "
                f"{ds.rows(study):,} training rows, seeds {', '.join(map(str, ds.seed_list(study)))}")

    common = one(DatasetSpec(name="", splits={}))
    own = [f"{ds.name}: {one(ds)}" for ds in study.datasets if one(ds) != common]
    return common + (f" ({'; '.join(own)})" if own else "")


def pipeline_doc(study: StudyConfig, ds: DatasetSpec, seed: int, root: Path) -> dict[str, Any]:
    data = {"name": ds.name, "task": ds.task, "splits": ds.splits,
            "max_rows": {"train": ds.rows(study)}, "max_length": ds.max_length, "seed": seed}
    if ds.val_from_train is not None:
        data["val_from_train"] = ds.val_from_train
    model = {"name_or_path": MODEL, "task": ds.task, "num_labels": ds.num_labels}
    return {
        "run_id": f"{ds.name}-s{seed}", "root": str(root), "retries": 1, "backoff_s": 5,
        "stages": [
            {"stage": "finetune", "config": {
                "data": data, "model": model, "lora": {"r": 8, "alpha": 16, "dropout": 0.1,
                                                        "target_modules": ds.lora_targets},
                "train": {"loss": "ce", "epochs": ds.n_epochs(study), "batch_size": 32, "lr": 2e-3,
                          "weight_decay": 0.01, "warmup_ratio": 0.1, "select_metric": "val_accuracy", "seed": seed},
                "resources": {"num_workers": 1, "cpus_per_worker": 2}}},
            {"stage": "extract", "config": {"data": data, "model": model, "adapter": "finetune", "batch_size": 64,
                                            "resources": {"num_workers": 2, "cpus_per_worker": 1}}},
            {"stage": "fit_heads", "config": {"heads": head_entries(seed), "fit_split": "train",
                                              "eval_splits": ["val", "test"]}},
            {"stage": "tune", "config": {"searches": [
                {"name": "alien_paper", "preset": "alien_paper", "seeds": [seed]},
                {"name": "adue_paper", "preset": "adue_paper", "scheduler": "asha", "grace_period": 2,
                 "reduction_factor": 3, "seeds": [seed]}]}},
        ],
    }


# -- running ------------------------------------------------------------------------------------------
def run_all(study: StudyConfig, root: Path) -> dict[str, float]:
    """``ue run`` every pipeline in turn; returns the wall seconds of each invocation."""
    ue = Path(sys.executable).with_name("ue")
    walls: dict[str, float] = {}
    for ds in study.datasets:
        for seed in ds.seed_list(study):
            doc = pipeline_doc(study, ds, seed, root)
            path = root / "pipelines" / f"{doc['run_id']}.yaml"
            atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False).encode())
            print(f"[study] {doc['run_id']}: ue run {path.relative_to(REPO) if path.is_relative_to(REPO) else path}",
                  flush=True)
            started = time.perf_counter()
            subprocess.run([str(ue), "run", str(path)], check=True)
            walls[doc["run_id"]] = time.perf_counter() - started
    return walls


# -- collecting ---------------------------------------------------------------------------------------
def collect_run(layout: RunLayout, accept: AcceptSpec, target_error: float, ds: DatasetSpec) -> dict[str, Any]:
    """Test metrics of every saved head (and the model's max prob), the searches' choices, the accept
    result and the stage times of one run; for token tasks also each method's sentence-level ROC-AUC
    (a sentence's score is its largest word score, it is wrong when any word is) and the entity F1."""
    test = read_features(layout, "test")
    head_dirs = [layout.head_dir(key) for key in head_keys()]
    methods = score_methods(test, head_dirs)
    rows = {r["method"]: r for r in metric_rows(methods, test, n_bins=15)}
    tokens: dict[str, Any] = {}
    if ds.task == "token_classification":
        ids, words_wrong = test["id"].to_pylist(), error_indicator(test)
        tags = json.loads((data_root() / ds.name / "labels.json").read_text(encoding="utf-8"))
        tokens["entity_f1"] = entity_f1(ids, test["pred"].to_numpy(), test["label"].to_numpy(), tags)
        tokens["sentence_roc_auc"] = {m.name: roc_auc(*sentence_level(ids, m.scores, words_wrong)) for m in methods}
        tokens["sentence_error_rate"] = float(sentence_level(ids, methods[0].scores, words_wrong)[1].mean())
    chosen = {}
    for name in SEARCHES:
        best = json.loads((layout.stage_dir("tune") / name / "best.json").read_text())
        chosen[name] = {**best["searched"], "best_epoch": best["refit"]["best_epoch"],
                        "val_roc_auc": best["val"]["mean"]}
    head = load_head(layout.head_dir(accept.head))
    val = read_features(layout, "val")
    threshold = calibrate(head, val, target_error=target_error, delta=accept.delta,
                          min_accepted=accept.min_accepted)
    u = head.uncertainty(test)
    accepted = u <= threshold.threshold
    errors = error_indicator(test)
    labels = np.asarray(test["label"].to_numpy())
    majority_error = 1.0 - np.bincount(labels).max() / len(labels)
    # What ECE a perfectly calibrated score would still show on this many rows: labels drawn from it.
    rng = np.random.default_rng(0)
    floor = float(np.mean([ece(1 - u, (rng.random(len(u)) >= u).astype(float)) for _ in range(200)]))
    decision = {"coverage": float(accepted.mean()),
                "accepted_error": float(errors[accepted].mean()) if accepted.any() else math.nan,
                "val_coverage": threshold.coverage, "upper_bound": threshold.upper_bound,
                "test_error_rate": float(errors.mean()), "ece_noise_floor": floor, "target_error": target_error,
                "majority_error": float(majority_error)}
    stages = Manifest(layout).read().get("stages", {})
    seconds = {name: stages[name].get("seconds") for name in ("finetune", "extract", "fit_heads", "tune")
               if name in stages}
    return {"metrics": rows, "chosen": chosen, "accept": decision, "seconds": seconds, **tokens}


def collect(study: StudyConfig, root: Path) -> dict[str, dict[int, dict[str, Any]]]:
    return {ds.name: {seed: collect_run(RunLayout(root, f"{ds.name}-s{seed}"), study.accept,
                                        ds.target_error or study.accept.target_error, ds)
                      for seed in ds.seed_list(study)}
            for ds in study.datasets}


# -- rendering ----------------------------------------------------------------------------------------
def method_order(results: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    names = {m for runs in results.values() for run in runs.values() for m in run["metrics"]}
    first = [MODEL_ROW, "msp", "entropy", "temperature", "mahalanobis", "relative_mahalanobis", "adue", "adue_paper",
             "alien", "alien_paper"]
    return [m for m in first if m in names] + sorted(names - set(first))


def stats(results: dict[str, dict[int, dict[str, Any]]], dataset: str, method: str, metric: str) -> tuple[float, float]:
    values = [run["metrics"][method][metric] for run in results[dataset].values()]
    values = np.array([np.nan if v is None else v for v in values], dtype=float) * 100
    return float(np.nanmean(values)), _std(values)


def average_ranks(results: dict[str, dict[int, dict[str, Any]]], methods: list[str], metric: str) -> dict[str, float]:
    """Rank of each method by its mean ``metric`` per dataset (1 = best), averaged over datasets."""
    _, mode = METRICS[metric]
    ranks: dict[str, list[float]] = {m: [] for m in methods}
    for dataset in results:
        means = np.array([stats(results, dataset, m, metric)[0] for m in methods])
        order = (-means if mode == "max" else means)
        r = np.argsort(np.argsort(order, kind="stable"), kind="stable") + 1.0
        for m, value in zip(methods, r, strict=True):
            ranks[m].append(float(value))
    return {m: float(np.mean(v)) for m, v in ranks.items()}


def save_plots(results: dict[str, dict[int, dict[str, Any]]], methods: list[str], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for metric in ("roc_auc", "ece"):
        title, _ = METRICS[metric]
        fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 0.32 * len(methods) + 1.5), sharey=True)
        for ax, dataset in zip(np.atleast_1d(axes), results, strict=True):
            pairs = [stats(results, dataset, m, metric) for m in methods]
            y = np.arange(len(methods))
            ax.barh(y, [p[0] for p in pairs], xerr=[p[1] for p in pairs], color="tab:blue", alpha=0.75)
            ax.set(title=dataset, xlabel=f"{title} x100 (mean +- std over seeds)", yticks=y, yticklabels=methods)
            ax.invert_yaxis()
            if metric == "roc_auc":
                lo = min(p[0] - p[1] for p in pairs if math.isfinite(p[0]))
                ax.set_xlim(max(0.0, lo - 2), None)
        fig.tight_layout()
        name = f"{metric}.png"
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def _pm(mean: float, std: float) -> str:
    return "-" if not math.isfinite(mean) else f"{mean:.2f} +- {std:.2f}"


def render(study: StudyConfig, results: dict[str, dict[int, dict[str, Any]]], walls: dict[str, float],
           plots: list[str], plot_dir: str) -> str:
    methods = method_order(results)
    ds_names = list(results)
    lines = [
        "# Results: is ueray's uncertainty better than the model's own?",
        "",
        "Generated by `benchmarks/study.py benchmarks/study.yaml`; do not edit by hand. Rerun the command to",
        "regenerate it (finished stages are skipped).",
        "",
        f"Setup: all-MiniLM-L6-v2 fine-tuned with {_setup(study)}; the training rows are a seeded subset, and a seed "
        "changes the subset, the fine-tune and every head. Heads are fitted on the cached train features and select "
        "epochs/configs on val only; every number below is on the test split (CoLA: GLUE's validation, with val "
        "carved from train by `data.val_from_train`). Metrics x100; ROC-AUC and PRR: higher is better; AURC and ECE: "
        "lower is better. ECE of heads that are not error probabilities (entropy, Mahalanobis) is the model's max-prob "
        "ECE. `*_paper`: the paper grid searched with Ray Tune (ALIEN 27 configs; AdUE 144 with ASHA) and refitted; "
        "`*_beta` / `*_platt` / `*_isotonic`: the head's score mapped to P(error) on half of val "
        "(`ue.heads.Calibrated`); `ablation_*`: ALIEN at its "
        "defaults with a loss term removed or a random init.",
        "",
    ]
    lines += _targets(study, results)
    for dataset in ds_names:
        runs = results[dataset]
        err = np.mean([r["accept"]["test_error_rate"] for r in runs.values()]) * 100
        majority = np.mean([r["accept"]["majority_error"] for r in runs.values()]) * 100
        lines += ["", f"## {dataset}", "", f"Test error rate of the fine-tuned model: {err:.2f}% (mean over seeds; "
                  f"always predicting the majority class: {majority:.2f}%).",
                  "", "| method | " + " | ".join(METRICS[m][0] for m in METRICS) + " |",
                  "|---|" + "---:|" * len(METRICS)]
        best = {m: _best(results, dataset, methods, m) for m in METRICS}
        for method in methods:
            cells = []
            for metric in METRICS:
                text = _pm(*stats(results, dataset, method, metric))
                cells.append(f"**{text}**" if method == best[metric] else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if all("entity_f1" in r for r in runs.values()):
            lines += _token_section(runs, methods)
    lines += ["", "## Average rank across datasets (1 = best, by the mean over seeds)", "",
              "| method | " + " | ".join(METRICS[m][0] for m in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    ranks = {m: average_ranks(results, methods, m) for m in METRICS}
    for method in sorted(methods, key=lambda m: ranks["roc_auc"][m]):
        lines.append(f"| {method} | " + " | ".join(f"{ranks[m][method]:.2f}" for m in METRICS) + " |")
    lines += ["", "## Configuration chosen per seed (validation ROC-AUC only)", "",
              "| dataset | seed | search | chosen | best epoch | val ROC-AUC |", "|---|---:|---|---|---:|---:|"]
    for dataset in ds_names:
        for seed, run in results[dataset].items():
            for name, c in run["chosen"].items():
                searched = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items()
                                     if k not in ("best_epoch", "val_roc_auc"))
                lines.append(f"| {dataset} | {seed} | {name} | {searched} | {c['best_epoch']} | "
                             f"{100 * c['val_roc_auc']:.2f} |")
    a = study.accept
    lines += ["", f"## Accept/abstain: `{a.head}` thresholded on val for an accepted error <= the target "
              f"at confidence {1 - a.delta:g} (at least {a.min_accepted} accepted)", "",
              "| dataset | seed | target | val coverage | test coverage | test accepted error | test error, all rows "
              "| within target |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for dataset in ds_names:
        for seed, run in results[dataset].items():
            d = run["accept"]
            ok = "-" if d["coverage"] == 0 else ("yes" if d["accepted_error"] <= d["target_error"] else "**no**")
            acc_err = "-" if not math.isfinite(d["accepted_error"]) else f"{100 * d['accepted_error']:.2f}%"
            lines.append(f"| {dataset} | {seed} | {100 * d['target_error']:.0f}% "
                         f"| {100 * d['val_coverage']:.1f}% | {100 * d['coverage']:.1f}% | "
                         f"{acc_err} | {100 * d['test_error_rate']:.2f}% | {ok} |")
    lines += ["", "## Wall times (seconds, this machine)", "",
              "| run | finetune | extract | fit_heads | tune | ue run (this invocation) |",
              "|---|---:|---:|---:|---:|---:|"]
    total = 0.0
    for dataset in ds_names:
        for seed, run in results[dataset].items():
            s = run["seconds"]
            stage_sum = sum(v for v in s.values() if v)
            total += stage_sum
            wall = walls.get(f"{dataset}-s{seed}")
            cells = " | ".join(f"{s.get(k) or 0:.0f}" for k in ("finetune", "extract", "fit_heads", "tune"))
            lines.append(f"| {dataset}-s{seed} | {cells} | {'-' if wall is None else f'{wall:.0f}'} |")
    lines += ["", f"Sum of stage times: {total / 60:.1f} min. Each is the stage's latest run (the manifest's "
              "`seconds`): a stage rerun after a code change shows the rerun, and a tune stage that resumed "
              "from finished trials shows only the resume and the refit.", ""]
    lines += [f"![{p}]({plot_dir}/{p})" for p in plots]
    return "\n".join(lines) + "\n"


def _token_section(runs: dict[int, dict[str, Any]], methods: list[str]) -> list[str]:
    """A token task's table above is per word; here per sentence, with the model's entity F1."""
    f1 = np.array([r["entity_f1"] for r in runs.values()]) * 100
    wrong = np.mean([r["sentence_error_rate"] for r in runs.values()]) * 100
    lines = ["", f"Per word above. Entity F1 of the fine-tuned model (CoNLL, seqeval): {_pm(f1.mean(), _std(f1))}; "
             f"{wrong:.2f}% of test sentences have a wrong word. Per sentence (score = the largest word score, "
             "wrong = any word wrong):", "", "| method | sentence ROC-AUC |", "|---|---:|"]
    for method in methods:
        values = np.array([r["sentence_roc_auc"].get(method, np.nan) for r in runs.values()], dtype=float) * 100
        lines.append(f"| {method} | {_pm(float(np.nanmean(values)), _std(values))} |")
    return lines


def _std(values: np.ndarray) -> float:
    return float(np.nanstd(values, ddof=1)) if len(values) > 1 else 0.0


def _best(results: dict[str, dict[int, dict[str, Any]]], dataset: str, methods: list[str], metric: str) -> str:
    means = {m: stats(results, dataset, m, metric)[0] for m in methods}
    means = {m: v for m, v in means.items() if math.isfinite(v)}
    return (max if METRICS[metric][1] == "max" else min)(means, key=means.get)


def _targets(study: StudyConfig, results: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """The issue's three targets, checked on the numbers above; misses are stated as misses."""
    a = study.accept
    lines = ["## Targets", "", "| dataset | tuned ALIEN - entropy, ROC-AUC (target >= +1.00) | "
             f"ECE: {a.head} vs model max prob (target <=) | accepted error <= its target where coverage > 0 |",
             "|---|---|---|---|"]
    notes = []
    for dataset, runs in results.items():
        gain = [100 * (r["metrics"]["alien_paper"]["roc_auc"] - r["metrics"]["entropy"]["roc_auc"])
                for r in runs.values()]
        g = float(np.mean(gain))
        ece_head, ece_model = stats(results, dataset, a.head, "ece")[0], stats(results, dataset, MODEL_ROW, "ece")[0]
        floor = 100 * float(np.mean([r["accept"]["ece_noise_floor"] for r in runs.values()]))
        covered = [r["accept"] for r in runs.values() if r["accept"]["coverage"] > 0]
        within = sum(d["accepted_error"] <= d["target_error"] for d in covered)
        verdict = {True: "met", False: "**missed**"}
        accepted = (f"{within} of {len(covered)} seeds ({len(runs) - len(covered)} with coverage 0) "
                    f"({verdict[within == len(covered)]})" if covered else
                    "**not measured**: nothing accepted on any seed (coverage 0)")
        lines.append(f"| {dataset} | {g:+.2f} ({verdict[g >= 1.0]}) | {ece_head:.2f} vs {ece_model:.2f} "
                     f"({verdict[ece_head <= ece_model]}; noise floor {floor:.2f}) | {accepted} |")
        err = float(np.mean([r["accept"]["test_error_rate"] for r in runs.values()]))
        majority = float(np.mean([r["accept"]["majority_error"] for r in runs.values()]))
        if err >= majority - 0.01:
            notes.append(f"- {dataset}: the fine-tune did not learn the task beyond the majority class (test error "
                         f"{100 * err:.2f}% vs {100 * majority:.2f}% for always the majority class), so every score "
                         "here ranks the errors of a near-constant predictor (near chance ROC-AUC for all heads), "
                         "and this dataset says little about the heads until a fine-tune learns it.")
        for head, rival in (("alien", "entropy"), ("alien_paper", "entropy"), ("adue", "msp"), ("adue_paper", "msp")):
            diff = stats(results, dataset, head, "roc_auc")[0] - stats(results, dataset, rival, "roc_auc")[0]
            if diff <= 0:
                notes.append(f"- {dataset}: `{head}` does not beat `{rival}` on ROC-AUC ({diff:+.2f} points).")
        calibrated = {m: stats(results, dataset, m, "ece")[0] for m in method_order(results)}
        best = min((m for m in calibrated if math.isfinite(calibrated[m])), key=calibrated.get)
        for head in ("alien", "alien_paper", "adue", "adue_paper"):
            if head != best:
                notes.append(f"- {dataset}: `{head}` is not the best calibrated (ECE {calibrated[head]:.2f}; best "
                             f"`{best}` {calibrated[best]:.2f}).")
    lines += ["", f"Noise floor: the mean ECE of `{a.head}`'s own probabilities against labels drawn from them "
              "(200 draws per seed), i.e. what a perfectly calibrated score shows on this many test rows; an ECE "
              "difference smaller than it is not a measured difference in calibration."]
    return lines + ["", "Where ALIEN or AdUE lose (ROC-AUC vs entropy/MSP, or calibration):", "", *notes]


def write_page(output: Path, text: str) -> None:
    """Write this study's page, keeping the marked sections that other study configs wrote
    (``study_qa.splice_section``) byte for byte after it."""
    old = output.read_text(encoding="utf-8") if output.is_file() else ""
    tail = marked_tail(old)
    atomic_write_bytes(output, (text.rstrip("\n") + "\n\n" + tail if tail else text).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--render-only", action="store_true", help="Collect finished runs and rewrite the page.")
    args = parser.parse_args()
    if "qa" in (yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}):
        study_qa.main(args.config, render_only=args.render_only)
        return
    study = load_config(StudyConfig, args.config)
    root = (REPO / study.root).resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    walls_file = root / "walls.json"
    walls = json.loads(walls_file.read_text()) if walls_file.is_file() else {}
    if not args.render_only:
        started = time.perf_counter()
        walls.update(run_all(study, root))
        walls["_total"] = time.perf_counter() - started
        atomic_write_bytes(walls_file, json.dumps(walls, indent=2).encode())
    results = collect(study, root)
    output = REPO / study.output
    plot_dir = output.with_suffix("")
    plots = save_plots(results, method_order(results), plot_dir)
    text = render(study, results, walls, plots, plot_dir.name)
    if "_total" in walls:
        text += f"\nWall time of the last full `benchmarks/study.py` invocation: {walls['_total'] / 60:.1f} min.\n"
    write_page(output, text)
    (root / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"[study] wrote {output} and {len(plots)} plots in {plot_dir}/")


if __name__ == "__main__":
    main()
