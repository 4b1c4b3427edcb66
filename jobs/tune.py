"""Stage four, ``tune``: Ray Tune searches of the trained heads' regularisation strengths.

For every search of the config (e.g. the ALIEN grid of METHODS.md, 27 configs x seeds):

1. resolve the space (preset + overrides) and read the cached *train* and *val* features of this
   run (and of ``feature_runs``, other backbone fine-tunes), only the columns the head fits on;
2. run the search on CPU actors; the features go into the object store once and every trial
   reads them from there; an interrupted search resumes. With ``pack`` (the default) the grid is
   cut into packs, one trial per CPU, each training its configurations in one batched loop
   (``tuning.run_packed_search``; ASHA becomes successive halving inside each pack); without, one
   trial per configuration (``tuning.head_trainable``);
3. write every configuration's trial to ``tune/<name>/trials.parquet`` (one row each);
4. pick the configuration with the best *validation* ROC-AUC, averaged over seeds and runs;
5. refit it on this run (first seed) and save it to ``heads/<name>/``;
6. only now read the test split, to report the refitted head's test metrics in
   ``tune/<name>/best.json``; the test split never reaches a trial or the choice.

Fine-tuning searches (``finetune:`` in the config) let Tune drive ``jobs.finetune``: each trial is
one fine-tuning run with the searched loss weights (UAL's ``eps_min``/``eps_max``, ...) in its own
run directory ``tune/<name>/runs/<trial id>/``, ranked by its validation ``train.select_metric``.

``python -m jobs.tune --config jobs/configs/tune/alien_paper.yaml run.run_id=my-run``
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from jobs._common import init_ray, job_main, run_stage
from jobs.schemas.finetune import METRIC_MODE
from jobs.schemas.tune import Config, FinetuneSearch, HeadSearch
from tuning import FeatureSet, best_config, head_trainable, run_packed_search, run_search, summarise
from tuning.packing import cut_packs, expand_configs
from tuning.space import SearchSpace
from tuning.trainable import FINAL, read_only_features
from ue.artifacts import RunLayout, atomic_write_bytes, atomic_write_json
from ue.config import config_hash
from ue.feature_cache import check_feature_files, part_files
from ue.features import error_indicator, select_columns
from ue.heads import HEADS, UncertaintyHead, build_head, load_classifier
from ue.metrics import METRIC_MODES, METRICS

log = logging.getLogger("ue.jobs.tune")
METRIC = "roc_auc"
"""Selection metric (METHODS.md: configs are selected by validation ROC-AUC)."""


def run(cfg: Config) -> dict[str, Any]:
    """Run every search of ``cfg`` under the manifest's bookkeeping; returns each search's summary."""
    return run_stage("tune", cfg, partial(tune_all, cfg))


def tune_all(cfg: Config, layout: RunLayout) -> dict[str, Any]:
    started = init_ray(cfg.num_cpus)
    try:
        out = {s.name: search_head(s, layout, resume=cfg.resume) for s in cfg.searches}
        out.update({s.name: search_finetune(s, layout, resume=cfg.resume) for s in cfg.finetune})
        return out
    finally:
        if started:
            import ray

            ray.shutdown()


def search_head(search: HeadSearch, layout: RunLayout, *, resume: bool = True) -> dict[str, Any]:
    """One head search, end to end (steps 1-6 of the module docstring); returns ``best.json``."""
    # 1. The space and the features (train + val only).
    space = search.resolved()
    head_cls = HEADS.get(space.head)
    _check_trainable(head_cls, space)
    runs = [layout.run_id, *search.feature_runs]
    features = {run_id: load_feature_set(RunLayout(layout.run_dir.parent, run_id), head_cls.fit_requires)
                for run_id in runs}
    log.info("search %s: %s, %d configs x %d seeds x %d runs", search.name, space.head,
             space.num_configs(search.algorithm, search.num_samples), len(search.seeds), len(runs))

    # 2. The search: packs of configurations (one trial each) or one trial per configuration.
    tune_dir = layout.tune_dir(search.name)
    replicas = runs if len(runs) > 1 else None
    common = {"storage_path": tune_dir, "scheduler": search.scheduler, "max_t": _max_epochs(space, head_cls),
              "grace_period": search.grace_period, "reduction_factor": search.reduction_factor,
              "max_concurrent_trials": search.max_concurrent_trials, "resume": resume}
    if search.pack:
        configs = expand_configs(space, search.algorithm, seeds=search.seeds, replicas=replicas,
                                 num_samples=search.num_samples, search_seed=search.search_seed)
        packs = cut_packs(configs, packs=_pack_count(search, len(configs)), default_epochs=_default_epochs(head_cls))
        log.info("search %s: %d configurations in %d packs", search.name, len(configs), len(packs))
        trials = run_packed_search(
            space.head, features, packs, cpus_per_trial=search.cpus_per_trial,
            custom_resources=search.custom_resources, **common,
            # The packs' composition is part of the search: another cut must not resume this one.
            fingerprint=_fingerprint(search, layout, runs) + _digest(packs),
        )
    else:
        trials = run_search(
            head_trainable(space.head, features, cpus_per_trial=search.cpus_per_trial,
                           custom_resources=search.custom_resources),
            param_space=space.param_space(search.algorithm, seeds=search.seeds, replicas=replicas),
            metric=f"val_{METRIC}", mode=METRIC_MODES[METRIC], num_samples=search.num_samples,
            search_seed=search.search_seed, fingerprint=_fingerprint(search, layout, runs), **common,
        )

    # 3. Every trial.
    write_parquet(trials, tune_dir / "trials.parquet")

    # 4. Selection on validation only.
    searched = list(space.space)
    summary = summarise(trials, by=searched, metric=f"val_{METRIC}", mode=METRIC_MODES[METRIC])
    params = {**space.params, **best_config(summary, searched), "seed": search.seeds[0]}

    # 5. Refit the winner on this run and save it.
    own = features[layout.run_id]
    with read_only_features():
        head = build_head(space.head, classifier=own.classifier, **params).fit(own.train, own.val)
        head.save(layout.head_dir(search.name))

        # 6. Report: test metrics of the refitted head, computed after the choice is made.
        best = _best_doc(search, space, summary, trials, params, head, own, layout)
    atomic_write_json(tune_dir / "best.json", best)
    log.info("search %s: best %s, val ROC-AUC %.4f +- %.4f", search.name, best["searched"],
             best["val"]["mean"], best["val"]["std"])
    return best


def search_finetune(search: FinetuneSearch, layout: RunLayout, *, resume: bool = True) -> dict[str, Any]:
    """Tune driving the fine-tuning job; returns ``best.json`` (the winner's values and run directory)."""
    from ray import tune

    metric = search.trial_config(search.example_values()).train.select_metric
    tune_dir = layout.tune_dir(search.name)
    trainable = tune.with_parameters(finetune_trial, search=search, root=str((tune_dir / "runs").resolve()),
                                     metric=metric)
    trials = run_search(
        tune.with_resources(trainable, {"cpu": search.cpus_per_trial}),
        param_space={k: d.to_tune(search.algorithm) for k, d in search.space.items()},
        metric=metric, mode=METRIC_MODE[metric], storage_path=tune_dir, num_samples=search.num_samples,
        search_seed=search.search_seed, max_concurrent_trials=search.max_concurrent_trials, reuse_actors=False,
        fingerprint=config_hash(_without_resources(search)) + config_hash(search.trial_config(search.example_values())),
        resume=resume,
    )
    write_parquet(trials, tune_dir / "trials.parquet")
    searched = [k for k in search.space if k != "train.seed"]  # seeds are repeats, not a setting
    summary = summarise(trials, by=searched, metric=metric, mode=METRIC_MODE[metric])
    values = best_config(summary, searched)
    chosen = trials.loc[(trials[list(values)] == pd.Series(values)).all(axis=1)] if values else trials
    top = summary.iloc[0]
    best = {
        "name": search.name, "metric": metric, "mode": METRIC_MODE[metric], "searched": values,
        "val": {"mean": float(top["mean"]), "std": float(top["std"]), "n": int(top["n"])},
        "trials": len(trials), "configs": len(summary),
        "run_dirs": [str(tune_dir / "runs" / r) for r in chosen["run_id"]],
    }
    atomic_write_json(tune_dir / "best.json", best)
    return best


def finetune_trial(config: dict[str, Any], *, search: FinetuneSearch, root: str, metric: str) -> None:
    """One Tune trial = one ``jobs.finetune`` run with the trial's values, in ``<root>/<trial id>/``;
    reports its best validation ``metric`` once, at the end."""
    from ray import tune

    from jobs.finetune import run as finetune_run

    run_id = tune.get_context().get_trial_id()
    outputs = finetune_run(search.trial_config(config, root=root, run_id=run_id))
    tune.report({metric: outputs[metric], "best_epoch": outputs["best_epoch"], "run_id": run_id, FINAL: True})


def load_feature_set(layout: RunLayout, columns: tuple[str, ...]) -> FeatureSet:
    """Train and val ``columns`` of a run's feature cache as NumPy arrays, with its classifier."""
    classifier = load_classifier(layout.features_dir)
    return FeatureSet(
        train=read_split(layout, "train", columns, classifier),
        val=read_split(layout, "val", columns, classifier),
        classifier=classifier,
    )


def read_split(layout: RunLayout, split: str, columns: tuple[str, ...], classifier: Any) -> dict[str, np.ndarray]:
    """The named columns of one cached split (every part file), checked against the classifier's d and C."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = part_files(layout.features_split_dir(split))
    if not files:
        raise FileNotFoundError(f"no features in {layout.features_split_dir(split)}: run the extract stage first")
    spec = classifier.spec
    check_feature_files(files, needs=dict.fromkeys(columns, "the tune stage"), hidden_size=spec.hidden_size,
                        num_labels=spec.num_labels)
    table = pa.concat_tables([pq.read_table(f, columns=list(columns)) for f in files])
    return select_columns(table, columns, who=f"the tune stage ({split} split)")


def write_parquet(frame: pd.DataFrame, path: Any) -> None:
    """Write ``frame`` as one Parquet file, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _check_trainable(head_cls: type[UncertaintyHead], space: SearchSpace) -> None:
    """Fail before Ray starts if the head cannot report per epoch or the space names unknown params."""
    if "on_epoch" not in inspect.signature(head_cls.fit).parameters:
        trained = [n for n in HEADS.names() if "on_epoch" in inspect.signature(HEADS.get(n).fit).parameters]
        raise ValueError(f"head {space.head!r} has no training to search; searchable heads: {', '.join(trained)}")
    known = list(head_cls().get_params())  # __init__ only stores keyword params
    unknown = sorted((set(space.params) | set(space.space)) - set(known))
    if unknown:
        raise ValueError(f"head {space.head!r} has no parameter(s) {', '.join(unknown)}; known: {', '.join(known)}")


def _max_epochs(space: SearchSpace, head_cls: type[UncertaintyHead]) -> int:
    """The most epochs (= reports) any trial makes: ASHA's ``max_t``."""
    if "epochs" in space.space:
        domain = space.space["epochs"]
        return int(max(domain.grid or domain.choice or domain.uniform or domain.loguniform))
    return int(space.params.get("epochs", _default_epochs(head_cls)))


def _pack_count(search: HeadSearch, configs: int) -> int:
    """Packs of a packed search: ``configs_per_trial`` each, or one per trial that can run at once."""
    if search.configs_per_trial is not None:
        return -(-configs // search.configs_per_trial)
    if search.max_concurrent_trials is not None:
        return min(configs, search.max_concurrent_trials)
    import ray

    slots = int(ray.cluster_resources().get("CPU", 1) // search.cpus_per_trial)
    return max(1, min(configs, slots))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _default_epochs(head_cls: type[UncertaintyHead]) -> int:
    return int(inspect.signature(head_cls.__init__).parameters["epochs"].default)


def _fingerprint(search: HeadSearch, layout: RunLayout, runs: list[str]) -> str:
    """The search config and the identity of the cached features: a change of either starts over."""
    files = []
    for run_id in runs:
        run_layout = RunLayout(layout.run_dir.parent, run_id)
        for split in ("train", "val"):
            files += [(run_id, split, f.name, f.stat().st_size, f.stat().st_mtime_ns)
                      for f in part_files(run_layout.features_split_dir(split))]
    doc = json.dumps({"search": config_hash(_without_resources(search)), "files": files}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _without_resources(search: HeadSearch | FinetuneSearch) -> HeadSearch | FinetuneSearch:
    """The search minus CPUs and concurrency, which change how fast it runs, not what it finds (and
    which a resumed Ray Tune experiment takes from its first run anyway)."""
    default = type(search).model_fields
    keys = [k for k in ("cpus_per_trial", "max_concurrent_trials", "custom_resources") if k in default]
    return search.model_copy(update={k: default[k].get_default(call_default_factory=True) for k in keys})


def _metrics(head: UncertaintyHead, features: Any) -> dict[str, float]:
    scores, errors = head.uncertainty(features), error_indicator(features)
    return {name: float(metric(scores, errors)) for name, metric in METRICS.items()}


def _best_doc(
    search: HeadSearch, space: SearchSpace, summary: pd.DataFrame, trials: pd.DataFrame, params: dict[str, Any],
    head: UncertaintyHead, own: FeatureSet, layout: RunLayout,
) -> dict[str, Any]:
    top = summary.iloc[0]
    test = None
    if part_files(layout.features_split_dir("test")):
        test = _metrics(head, read_split(layout, "test", head.requires + ("label", "pred"), own.classifier))
    return {
        "name": search.name, "head": space.head, "preset": search.preset, "metric": f"val_{METRIC}",
        "mode": METRIC_MODES[METRIC], "algorithm": search.algorithm, "scheduler": search.scheduler,
        "searched": {k: params[k] for k in space.space}, "params": params,
        "val": {"mean": float(top["mean"]), "std": float(top["std"]), "n": int(top["n"])},
        "seeds": search.seeds, "runs": [layout.run_id, *search.feature_runs],
        "trials": len(trials), "configs": len(summary), "early_stopped": int(trials["early_stopped"].sum()),
        "refit": {"head_dir": str(layout.head_dir(search.name)), "best_epoch": head.best_epoch_,
                  "val": _metrics(head, own.val), "test": test},
    }


if __name__ == "__main__":
    job_main(Config, run)
