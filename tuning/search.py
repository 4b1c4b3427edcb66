"""``run_search``: one Ray Tune experiment, resumable, returned as a table with one row per trial.

The experiment lives in ``<storage_path>/<name>/`` (Ray Tune's own layout). When that folder holds a
restorable experiment of the same search (same ``fingerprint``), the search is resumed with
``Tuner.restore``: finished trials are kept as they are, unfinished and errored ones run again. An
interrupted search (Ctrl+C, SIGUSR1, a killed driver) raises :class:`SearchInterrupted`; calling
``run_search`` again with the same arguments completes it. :func:`run_packed_search` runs one trial
per pack of head configurations (``tuning.packing``) and returns the same table, one row per
configuration.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from tuning.trainable import CONFIGS, FINAL, PACK
from ue.artifacts import atomic_write_json, read_json

log = logging.getLogger("ue.tuning")
Scheduler = Literal["fifo", "asha"]
_FINGERPRINT_FILE = "search.json"
BUFFER_SECONDS = 2.0
"""Under FIFO, a trial actor hands its reports to the driver at most this often (see ``_tune_env``)."""
_TUNE_BOOKKEEPING = {  # what Tune adds to every result: kept in its own files, not in the table
    "trial_id", "timestamp", "checkpoint_dir_name", "done", "training_iteration", "date", "time_this_iter_s",
    "time_total_s", "pid", "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "config",
    "experiment_tag",
}


class SearchInterrupted(RuntimeError):
    """The search stopped before every trial finished; its state is saved and a rerun resumes it."""


class TrialsFailed(RuntimeError):
    """Some trials raised; rerunning the search retries them and keeps the finished ones."""


def count_trials(param_space: Mapping[str, Any], num_samples: int = 1) -> int:
    """Trials a search creates: ``num_samples`` times the size of every top-level grid."""
    grids = [v["grid_search"] for v in param_space.values() if isinstance(v, Mapping) and "grid_search" in v]
    return num_samples * math.prod(len(g) for g in grids)


def run_search(
    trainable: Callable[..., Any] | Any,
    *,
    param_space: Mapping[str, Any],
    metric: str,
    mode: Literal["max", "min"],
    storage_path: str | Path,
    name: str = "experiment",
    num_samples: int = 1,
    search_seed: int = 0,
    scheduler: Scheduler = "fifo",
    max_t: int | None = None,
    grace_period: int = 1,
    reduction_factor: float = 3.0,
    max_concurrent_trials: int | None = None,
    reuse_actors: bool = True,
    fingerprint: str = "",
    resume: bool = True,
    callbacks: Sequence[Any] = (),
    verbose: int = 0,
) -> pd.DataFrame:
    """Run (or resume) a Ray Tune search; return one row per trial.

    Args:
        trainable: a function trainable, usually from :func:`tuning.trainable.head_trainable`; it must
            report ``metric`` and mark its last report with ``final=True``.
        param_space: Ray Tune param space; grids are enumerated, other domains drawn ``num_samples``
            times and held constant across the grids (so head seeds repeat the same configuration).
        metric, mode: what the scheduler and the ordering of trials optimise (validation only).
        storage_path, name: the experiment goes to ``<storage_path>/<name>/``.
        search_seed: seed of the random draws.
        scheduler: ``fifo`` runs every trial to the end; ``asha`` stops bad ones early (ASHA,
            Li et al. 2020) after ``grace_period`` reports, keeping 1 in ``reduction_factor`` per rung,
            up to ``max_t`` reports.
        max_concurrent_trials: at most this many trials at once (default: as many as CPUs allow).
        reuse_actors: run consecutive trials in the same CPU actor (saves a process start per trial).
        fingerprint: identifies the search; a saved experiment with another fingerprint is discarded
            instead of resumed.
        resume: resume a saved experiment of the same search instead of starting over.
        callbacks: extra ``ray.tune.Callback`` objects (progress, tests).
        verbose: Ray Tune's console verbosity (0 silent .. 2 every result).

    A resumed experiment keeps the concurrency limit and callbacks of its first run: Ray Tune
    restores them from its saved state.

    Returns:
        Columns: ``trial_id``, every config key, the last reported value of every metric,
        ``iterations`` (reports), ``time_s``, ``early_stopped``; sorted by ``trial_id``.

    Raises:
        SearchInterrupted: the run was interrupted; call again to resume.
        TrialsFailed: a trial raised; the message holds the first error.
    """
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    storage = Path(storage_path).resolve()
    exp_dir = storage / name
    if resume and _same_search(storage, fingerprint) and tune.Tuner.can_restore(exp_dir):
        log.info("resuming the search saved in %s", exp_dir)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        if exp_dir.exists():
            log.info("discarding the saved experiment %s (another search or resume=False)", exp_dir)
            shutil.rmtree(exp_dir)
        atomic_write_json(storage / _FINGERPRINT_FILE, {"fingerprint": fingerprint})
        tuner = tune.Tuner(
            trainable,
            param_space=dict(param_space),
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=num_samples,
                scheduler=_scheduler(scheduler, max_t=max_t, grace_period=grace_period,
                                     reduction_factor=reduction_factor),
                # Tune ignores TuneConfig.max_concurrent_trials for a variant generator: limit it here.
                search_alg=_variants(search_seed, max_concurrent_trials),
                reuse_actors=reuse_actors,
            ),
            run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=verbose,
                                      callbacks=[*callbacks, JsonLoggerCallback()]),
        )
    with _tune_env(buffered=scheduler == "fifo"):
        grid = tuner.fit()
    trials = trials_table(grid)
    _check_complete(grid, trials, count_trials(param_space, num_samples), exp_dir)
    return trials


def run_packed_search(
    head: str,
    features: Mapping[str, Any],
    packs: list[list[dict[str, Any]]],
    *,
    storage_path: str | Path,
    name: str = "experiment",
    scheduler: Scheduler = "fifo",
    max_t: int | None = None,
    grace_period: int = 1,
    reduction_factor: float = 3.0,
    cpus_per_trial: float = 1.0,
    custom_resources: dict[str, float] | None = None,
    max_concurrent_trials: int | None = None,
    fingerprint: str = "",
    resume: bool = True,
    callbacks: Sequence[Any] = (),
    verbose: int = 0,
) -> pd.DataFrame:
    """:func:`run_search` with one trial per pack of head configurations (``tuning.packing``).

    ``packs``: lists of head parameters (with ``seed`` and, for several feature sets, ``replica``),
    e.g. from :func:`tuning.packing.cut_packs`. ``scheduler="asha"`` halves each pack at ASHA's rungs
    (:class:`tuning.packing.SuccessiveHalving` with ``max_t``, ``grace_period``, ``reduction_factor``);
    Tune itself runs the packs FIFO. Returns one row per configuration, columns as :func:`run_search`.
    """
    from ray import tune

    from tuning.packing import SuccessiveHalving
    from tuning.trainable import packed_head_trainable

    halving = None
    if scheduler == "asha":
        if max_t is None:
            raise ValueError("scheduler='asha' needs max_t, the most epochs a configuration trains")
        halving = SuccessiveHalving(max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor)
    trainable = packed_head_trainable(head, dict(features), packs, halving=halving, cpus_per_trial=cpus_per_trial,
                                      custom_resources=custom_resources)
    return run_search(
        trainable, param_space={PACK: tune.grid_search(list(range(len(packs))))}, metric="val_roc_auc", mode="max",
        storage_path=storage_path, name=name, max_concurrent_trials=max_concurrent_trials, fingerprint=fingerprint,
        resume=resume, callbacks=callbacks, verbose=verbose,
    )


@contextmanager
def _tune_env(*, buffered: bool) -> Iterator[None]:
    """Ray Tune settings it reads from the environment when ``Tuner.fit`` starts, set for that call.

    - Only the JSON logger (each trial's ``result.json``): Tune's CSV and TensorBoard loggers would
      write every per-epoch report again on the cores the trials run on (0.2 s per trial on the
      27-config ALIEN grid over 2 CPUs).
    - ``buffered`` (FIFO only): a function trainable stops after every ``tune.report`` until the
      driver has taken the result and asked for the next, one round trip per epoch. Buffered, the
      actor keeps training and sends its reports every ``BUFFER_SECONDS``. Nothing decides on the
      reports under FIFO, so only the driver's view of progress lags; ASHA needs every report as it
      comes to stop a trial on time, so it stays unbuffered.
    """
    settings = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    if buffered:
        settings |= {"TUNE_RESULT_BUFFER_LENGTH": "1000", "TUNE_RESULT_BUFFER_MIN_TIME_S": str(BUFFER_SECONDS)}
    previous = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _scheduler(kind: Scheduler, *, max_t: int | None, grace_period: int, reduction_factor: float) -> Any:
    if kind == "fifo":
        return None  # Tune's default FIFO scheduler
    from ray.tune.schedulers import ASHAScheduler

    if max_t is None:
        raise ValueError("scheduler='asha' needs max_t, the most reports (epochs) a trial makes")
    return ASHAScheduler(max_t=max_t, grace_period=min(grace_period, max_t), reduction_factor=reduction_factor)


def _variants(seed: int, max_concurrent: int | None) -> Any:
    """Grid + random variants; random draws held constant across the grids (seeds, replicas)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(constant_grid_search=True, random_state=seed, max_concurrent=max_concurrent or 0)


def _same_search(storage: Path, fingerprint: str) -> bool:
    path = storage / _FINGERPRINT_FILE
    return path.is_file() and read_json(path).get("fingerprint") == fingerprint


def trials_table(grid: Any) -> pd.DataFrame:
    """One row per trial of a Ray Tune ``ResultGrid`` (see :func:`run_search` for the columns); a
    packed trial (:func:`tuning.trainable.fit_pack_trial`) gives one row per configuration, with
    ``trial_id`` ``<the pack's trial id>_<index in the pack>`` and the pack's ``time_s``."""
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        config = dict(result.config or {})
        clash = sorted(set(config) & set(metrics))
        if clash:
            raise ValueError(f"config keys {clash} are also metric names; rename the reported metrics")
        trial_id = metrics.get("trial_id", Path(result.path).name)
        if PACK in config:
            for i, member in enumerate(metrics.get(CONFIGS) or []):
                row = {"trial_id": f"{trial_id}_{i:03d}", **member}
                row["time_s"] = metrics.get("time_total_s", math.nan)
                row["early_stopped"] = not row.pop(FINAL)
                rows.append(row)
            continue
        row = {"trial_id": trial_id, **config}
        row.update({k: v for k, v in metrics.items() if k not in _TUNE_BOOKKEEPING})
        row["iterations"] = metrics.get("training_iteration", 0)
        row["time_s"] = metrics.get("time_total_s", math.nan)
        row["early_stopped"] = not metrics.get(FINAL, False)
        row.pop(FINAL, None)
        rows.append(row)
    return pd.DataFrame(rows).sort_values("trial_id", kind="stable").reset_index(drop=True)


def _check_complete(grid: Any, trials: pd.DataFrame, expected: int, exp_dir: Path) -> None:
    if grid.num_errors:
        raise TrialsFailed(
            f"{grid.num_errors} of {expected} trials failed; first error:\n{grid.errors[0]}\n"
            f"fix the cause and run the search again: it resumes from {exp_dir} and retries only those trials"
        )
    done = sum(bool(r.metrics and r.metrics.get("done")) for r in grid)
    if len(trials) < expected or done < expected:
        raise SearchInterrupted(
            f"search interrupted with {done} of {expected} trials finished; its state is saved in {exp_dir}: "
            "run the same command again to resume (finished trials are not rerun)"
        )
