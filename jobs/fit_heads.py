"""Stage 3, fit heads: fit every uncertainty head on the cached features, save it, evaluate it.

    python -m jobs.fit_heads --config jobs/configs/fit_heads/all_heads.yaml run.run_id=demo

Recipe:
1. Setup: read ``features.json``, build every head (an unknown name, parameter or a missing
   classification module fails here), and check the schema of every file a head will read.
2. Ray Data reads the Parquet features with column projection: each distinct column set that some
   head needs is read once into the object store, so a head receives only the columns it declares
   (``requires`` / ``fit_requires``).
3. One Ray task per head (``cpus_per_head`` CPUs each; the longest fits start first) fits it on the
   fit split with val for selection, saves it under ``heads/<name>/`` and scores the eval splits.
   Several settings of one trained head (``save_as`` variants of alien or adue) are one task that
   fits them as one pack (``ue.heads.fit_packed``): about the cost of one fit, same results.
4. Every metric of METHODS.md per head and eval split goes to ``fit_heads/metrics.json``; a table
   (rows: heads; columns: accuracy, ROC-AUC, AURC, PRR, ECE) is printed per split.

Fit split: ``train`` (the ALIEN/AdUE authors' setting) or ``calibration``, a seeded share of val
(by a hash of the row id); then the rest of val is both the selection data and the reported val.
The test split is only ever scored.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
import torch

from jobs._common import init_ray, job_main, run_stage
from jobs.schemas.fit_heads import Config, HeadEntry
from ue.artifacts import RunLayout, atomic_write_json
from ue.data import id_share
from ue.evaluation import evaluate_scores, format_table
from ue.feature_cache import CLASSIFIER_FILES, check_feature_files, part_files, read_meta
from ue.features import column
from ue.heads import HEADS, Calibrated, build_head, fit_packed, load_classifier, pack_key

log = logging.getLogger("ue.jobs.fit_heads")
METRIC_COLUMNS = ("pred", "label", "logits")
"""What the driver reads from every eval split to judge the scores."""
CALIBRATION_SALT = "fit_heads.calibration:"
"""Salt of the id hash that assigns val rows to the calibration split (independent of a val carve-out)."""
View = tuple[str, str | None]
"""(split on disk, part of it): part is None, "calibration" or "selection" (the two shares of val)."""


def run(cfg: Config) -> dict[str, Any]:
    return run_stage("fit_heads", cfg, partial(fit_heads, cfg))


def fit_heads(cfg: Config, layout: RunLayout) -> dict[str, Any]:
    # 1. Setup: what is cached, the heads, and a schema check of every file they will read.
    meta = read_meta(layout.features_dir)
    heads = {entry.key: _build_head(entry, layout.features_dir, meta) for entry in cfg.heads}
    views = _views(cfg)
    needs = _needed_columns(cfg, heads, views)
    _check_cache(layout, meta, needs)

    started = init_ray()
    try:
        # 2. One Ray Data read; each head then gets the rows of its views with only its own columns.
        blocks = _FeatureBlocks(layout, needs, cfg)

        # 3. One task per head, longest first: its inputs are submitted with it, so the cuts of the
        #    short heads queue behind the long fits instead of delaying them.
        #    Several settings of one trained head (save_as variants) are one task, fitted as one pack.
        task = ray.remote(_fit_and_score)
        pending = {
            tuple(keys): task.options(num_cpus=cfg.cpus_per_head, name=f"fit_head:{'+'.join(keys)}").remote(
                [heads[k] for k in keys], _inputs(cfg, heads[keys[0]], views, blocks),
                head_dirs=[str(layout.head_dir(k)) for k in keys], threads=cfg.cpus_per_head)
            for keys in sorted(_packs(heads), key=lambda ks: max(_expected_cost(heads[k]) for k in ks), reverse=True)
        }
        truth = {split: ray.get(blocks.cut(views[split], (*METRIC_COLUMNS, *cfg.score_columns)))
                 for split in cfg.eval_splits}
        results = {k: r for keys, ref in pending.items() for k, r in zip(keys, ray.get(ref), strict=True)}
    finally:
        if started:
            ray.shutdown()

    # 4. Metrics of every head on every eval split.
    metrics = _evaluate(cfg, heads, results, truth)
    report = {
        "fit_split": cfg.fit_split,
        "heads": {k: {"name": h.name, "params": _json_params(h), "fit_seconds": results[k]["fit_seconds"],
                      "error_probability": h.error_probability} for k, h in heads.items()},
        "metrics": metrics,
    }
    path = atomic_write_json(layout.stage_dir("fit_heads") / "metrics.json", report)
    for split in cfg.eval_splits:
        print(format_table(metrics[split], title=f"{layout.run_id}: {split} split, heads fitted on {cfg.fit_split}"))
    return {"metrics": str(path), "heads": {k: str(layout.head_dir(k)) for k in heads}}


# -- setup -------------------------------------------------------------------------------------------
def _build_head(entry: HeadEntry, features_dir: Path, meta: dict[str, Any]) -> Any:
    """The head of ``entry``; ALIEN/AdUE get a copy of the model's classification module; with
    ``calibrate``, wrapped in :class:`ue.heads.Calibrated`."""
    params = dict(entry.params)
    if "classifier" in inspect.signature(HEADS.get(entry.name)).parameters:
        if not all((features_dir / f).is_file() for f in CLASSIFIER_FILES):
            raise ValueError(
                f"head {entry.key!r} ({entry.name}) starts from the model's classification module, but "
                f"{features_dir} has none (task {meta['task']}); drop this head for this task"
            )
        params["classifier"] = load_classifier(features_dir)
    head = build_head(entry.name, **params)
    return Calibrated(head=head, method=entry.calibrate, fraction=entry.calibrate_fraction) if entry.calibrate else head


def _views(cfg: Config) -> dict[str, View]:
    """Which rows play which role: fit, val (selection and the reported val) and test."""
    if cfg.fit_split == "train":
        return {"fit": ("train", None), "val": ("val", None), "test": ("test", None)}
    return {"fit": ("val", "calibration"), "val": ("val", "selection"), "test": ("test", None)}


def _needed_columns(cfg: Config, heads: dict[str, Any], views: dict[str, View]) -> dict[View, dict[str, str]]:
    """Per view, every column someone reads and who (named when a file lacks it)."""
    needs: dict[View, dict[str, str]] = {}
    for key, head in heads.items():
        for role in ("fit", "val"):
            needs.setdefault(views[role], {}).update({c: f"head {key!r} ({role})" for c in head.fit_requires})
        for split in cfg.eval_splits:
            needs.setdefault(views[split], {}).update({c: f"head {key!r}" for c in head.requires})
    for split in cfg.eval_splits:
        needs[views[split]].update({c: "evaluation" for c in METRIC_COLUMNS})
        needs[views[split]].update({c: "score_columns" for c in cfg.score_columns})
    if cfg.fit_split == "calibration":
        for view in (views["fit"], views["val"]):
            needs[view]["id"] = "the calibration split (rows are assigned by id)"
    return {view: cols for view, cols in needs.items() if cols}


def _check_cache(layout: RunLayout, meta: dict[str, Any], needs: dict[View, dict[str, str]]) -> None:
    """Every needed column is in every file that will be read, with the widths of features.json."""
    by_split: dict[str, dict[str, str]] = {}
    for (split, _), columns in needs.items():
        by_split.setdefault(split, {}).update(columns)
    for split, columns in sorted(by_split.items()):
        check_feature_files(part_files(layout.features_split_dir(split)), needs=columns,
                            hidden_size=meta["hidden_size"], num_labels=meta["num_labels"])


def _expected_cost(head: Any) -> tuple[int, int]:
    # Trained heads run epochs over the fit split; the others are one pass (or none).
    return getattr(getattr(head, "head", head), "epochs", 0), len(head.fit_requires)


# -- reading -----------------------------------------------------------------------------------------
class _FeatureBlocks:
    """Ray Data reads every needed split once (the union of the needed columns) into the object store;
    then one small task per (view, column set) cuts out that view's rows and only those columns, so
    a head pulls nothing it did not declare. A head that declares every column read cuts its rows
    itself from the blocks (:class:`_Uncut`): the longest fits start as soon as the read is done,
    without a copy of their inputs through the object store first. Blocks keep file order, so rows
    come in the same order in every cut and every run (ALIEN/AdUE shuffle by row index with a fixed
    seed)."""

    def __init__(self, layout: RunLayout, needs: dict[View, dict[str, str]], cfg: Config) -> None:
        splits = sorted({split for split, _ in needs})
        files = [str(f) for split in splits for f in part_files(layout.features_split_dir(split))]
        columns = sorted({c for cols in needs.values() for c in cols})
        options = ray.data.DataContext.get_current().execution_options
        keep, options.preserve_order = options.preserve_order, True
        try:
            ds = ray.data.read_parquet(files, columns=columns, include_paths=True)
            self._blocks = ds.materialize().to_arrow_refs()
        finally:
            options.preserve_order = keep
        self._columns = frozenset(columns)
        self._fraction, self._seed = cfg.calibration_fraction, cfg.calibration_seed
        self._cuts: dict[tuple[View, tuple[str, ...]], Any] = {}

    def cut(self, view: View, columns: tuple[str, ...]) -> Any:
        """Ref to a table with the rows of ``view`` and exactly ``columns``."""
        key = (view, tuple(dict.fromkeys(columns)))
        if key not in self._cuts:
            self._cuts[key] = ray.remote(_cut).remote(
                view, list(key[1]), self._fraction, self._seed, *self._blocks)
        return self._cuts[key]

    def for_head(self, view: View, columns: tuple[str, ...]) -> Any:
        """What a head's task resolves (:func:`_resolve`) to the rows of ``view`` with ``columns``."""
        if self._columns == set(columns):
            return _Uncut(view, list(dict.fromkeys(columns)), self._fraction, self._seed, self._blocks)
        return self.cut(view, columns)


@dataclass(frozen=True)
class _Uncut:
    """The read blocks and which rows and columns of them a head wants, cut in the head's task."""

    view: View
    columns: list[str]
    fraction: float
    seed: int
    blocks: list[Any]


def _resolve(source: Any) -> pa.Table:
    """The table behind an input of :func:`_fit_and_score`: a cut's ref or an :class:`_Uncut`."""
    if isinstance(source, _Uncut):
        return _cut(source.view, source.columns, source.fraction, source.seed, *ray.get(source.blocks))
    return ray.get(source)


def _cut(view: View, columns: list[str], fraction: float, seed: int, *blocks: pa.Table) -> pa.Table:
    """Rows of ``view`` (a split, or a share of val) from the read blocks, with ``columns`` only."""
    split, share = view
    mine = []
    for block in blocks:  # blocks come one file at a time: keep or drop them whole (no copy)
        in_split = pc.match_substring(block["path"], f"split={split}/")
        mine.append(block if pc.all(in_split).as_py() else block.filter(in_split))
    table = pa.concat_tables(mine).select([*columns, *(["id"] if share else [])])
    if share is not None:
        in_calibration = id_share(table["id"].to_pylist(), fraction, seed=seed, salt=CALIBRATION_SALT)
        table = table.filter(pa.array(in_calibration if share == "calibration" else ~in_calibration))
    # One chunk per column: every head reading this cut gets its arrays without another copy.
    return table.select(columns).combine_chunks()


# -- fitting -----------------------------------------------------------------------------------------
def _inputs(cfg: Config, head: Any, views: dict[str, View], blocks: _FeatureBlocks) -> dict[str, Any]:
    """What ``head``'s task resolves to tables of the columns it declares (:meth:`_FeatureBlocks.for_head`):
    fit and val (selection) data, eval splits."""
    fit_cols = head.fit_requires
    return {
        "fit": blocks.for_head(views["fit"], fit_cols) if fit_cols else None,
        "val": blocks.for_head(views["val"], fit_cols) if fit_cols else None,
        "eval": {split: blocks.for_head(views[split], head.requires) for split in cfg.eval_splits},
    }


def _fit_and_score(heads: list[Any], inputs: dict[str, Any], *, head_dirs: list[str], threads: int) -> list[Any]:
    """Runs in a Ray worker: fit (train/calibration + val for selection), save, score the eval splits.

    Several heads here are settings of one trained head (:func:`_packs`): they are fitted as one
    pack (``ue.heads.fit_packed``), each ending as its own fit would, and share its fit time."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    if inputs["fit"] is None:
        for head in heads:
            head.fit(pa.table({}))  # post-hoc heads learn nothing
    elif len(heads) > 1:
        fit_packed(heads, _resolve(inputs["fit"]), _resolve(inputs["val"]))
    else:
        heads[0].fit(_resolve(inputs["fit"]), val=_resolve(inputs["val"]))
    seconds = time.perf_counter() - started
    out = []
    for head, head_dir in zip(heads, head_dirs, strict=True):
        head.save(head_dir)
        out.append({"fit_seconds": round(seconds, 3),
                    "scores": {split: head.uncertainty(_resolve(source)) for split, source in inputs["eval"].items()}})
    return out


def _packs(heads: dict[str, Any]) -> list[list[str]]:
    """Head keys grouped into tasks: trained heads that can share a pack (``ue.heads.pack_key``: one kind,
    batch size, classifier shape) together, every other head alone; calibrated heads fit alone."""
    groups: dict[Any, list[str]] = {}
    for key, head in heads.items():
        shared = None if isinstance(head, Calibrated) else pack_key(head)
        groups.setdefault(key if shared is None else shared, []).append(key)
    return list(groups.values())


# -- evaluation --------------------------------------------------------------------------------------
def _evaluate(cfg: Config, heads: dict[str, Any], results: dict[str, Any],
              truth: dict[str, pa.Table]) -> dict[str, dict[str, dict[str, Any]]]:
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    for split, table in truth.items():
        given = {"pred": column(table, "pred"), "label": column(table, "label"), "logits": column(table, "logits")}
        metrics[split] = {
            key: evaluate_scores(results[key]["scores"][split], error_probability=head.error_probability,
                                 n_bins=cfg.ece_bins, **given)
            for key, head in heads.items()
        }
        for name in cfg.score_columns:
            metrics[split][name] = evaluate_scores(column(table, name).astype(np.float64), error_probability=False,
                                                   n_bins=cfg.ece_bins, **given)
    return metrics


def _json_params(head: Any) -> dict[str, Any]:
    if isinstance(head, Calibrated):
        return {**head.get_params(), "head": {"name": head.head.name, "params": _json_params(head.head)}}
    return {k: v for k, v in head.get_params().items() if k != "classifier"}


if __name__ == "__main__":
    job_main(Config, run)
