"""Packed search: a grid enumerated here, cut into packs (one Ray Tune trial each), halved inside a pack.

A trial of a packed search fits a whole pack of head configurations in one batched loop
(``ue.heads.fit_packed``), so a grid of 27 costs about as many steps as a few fits. Ray Tune still
schedules, records and resumes the trials (the packs); the trials table gets one row per
configuration (:func:`tuning.search.trials_table`).

ASHA cannot stop one configuration of a running trial, so a packed search replaces it by
successive halving inside each pack with ASHA's rungs and cutoff (:class:`SuccessiveHalving`).

Torch-free: configs validate and packs are cut without importing torch or Ray.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tuning.space import Algorithm, SearchSpace

REPLICA = "replica"


def expand_configs(
    space: SearchSpace, algorithm: Algorithm, *, seeds: Sequence[int], replicas: Sequence[str] | None = None,
    num_samples: int = 1, search_seed: int = 0,
) -> list[dict[str, Any]]:
    """Every trial configuration of a search: fixed params, searched values, ``seed`` (and ``replica``).

    Grid search: the product of the grids. Random search: ``num_samples`` draws from a NumPy generator
    seeded by ``search_seed`` (not Ray Tune's draws), each held constant across seeds and replicas.
    """
    space.check(algorithm)
    keys = list(space.space)
    if algorithm == "grid":
        values = [dict(zip(keys, combo, strict=True))
                  for combo in itertools.product(*(space.space[k].grid for k in keys))]
    else:
        rng = np.random.default_rng(search_seed)
        values = [{k: _draw(space.space[k], rng) for k in keys} for _ in range(num_samples)]
    repeats = [{"seed": s} for s in seeds]
    if replicas:
        repeats = [{**r, REPLICA: rep} for rep in replicas for r in repeats]
    return [{**space.params, **v, **r} for r in repeats for v in values]


def _draw(domain: Any, rng: np.random.Generator) -> Any:
    if domain.grid is not None or domain.choice is not None:
        options = domain.grid if domain.grid is not None else domain.choice
        return options[int(rng.integers(len(options)))]
    if domain.uniform is not None:
        return float(rng.uniform(*domain.uniform))
    low, high = domain.loguniform
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def cut_packs(configs: Sequence[Mapping[str, Any]], *, packs: int, default_epochs: int) -> list[list[dict[str, Any]]]:
    """Cut ``configs`` into at most ``packs`` packs of similar cost (one replica per pack).

    A pack's steps grow with the epochs of its configurations, so configurations go longest first
    to the pack with the fewest epochs so far (longest-processing-time order); ``default_epochs`` is
    the head's when a config sets none. Each replica (backbone fine-tune) gets packs in proportion to
    its configurations; the order inside a pack follows ``configs``.
    """
    if packs < 1:
        raise ValueError(f"packs must be >= 1, got {packs}")
    by_replica: dict[Any, list[int]] = {}
    for i, c in enumerate(configs):
        by_replica.setdefault(c.get(REPLICA), []).append(i)
    size = math.ceil(len(configs) / packs)
    out = []
    for members in by_replica.values():
        n = math.ceil(len(members) / size)
        load, chosen = [0] * n, [[] for _ in range(n)]
        for i in sorted(members, key=lambda j: -configs[j].get("epochs", default_epochs)):
            # Fewest epochs first, then fewest configs: equal-epoch grids split evenly.
            target = min(range(n), key=lambda p: (load[p], len(chosen[p])))
            load[target] += configs[i].get("epochs", default_epochs)
            chosen[target].append(i)
        out += [[dict(configs[i]) for i in sorted(group)] for group in chosen if group]
    return out


class SuccessiveHalving:
    """ASHA's rule applied to the configurations of one pack, all at the same epoch.

    Rungs at ``grace_period * reduction_factor ** k`` epochs below ``max_t`` (ASHA's milestones,
    Li et al. 2020, as Ray Tune places them). At a rung, a configuration goes on if its best val
    ROC-AUC so far is at least the ``1 - 1/reduction_factor`` quantile of those at the rung (one
    still without a finite value goes on, as under ASHA); configurations that end at that epoch
    anyway are never stopped. ASHA decides each trial against those that reached the rung before it;
    here all of the pack reach it together, so the cutoff is the pack's.
    """

    def __init__(self, *, max_t: int, grace_period: int = 1, reduction_factor: float = 3.0) -> None:
        grace = min(grace_period, max_t)
        count = int(math.log(max_t / grace) / math.log(reduction_factor) + 1)
        self.rungs = sorted({int(grace * reduction_factor**k) for k in range(count)} - {max_t})
        self.reduction_factor = reduction_factor

    def stop(self, epoch: int, best: Mapping[int, float], epochs: Mapping[int, int]) -> list[int]:
        """The configs (keys of ``best``, their best val ROC-AUC so far) to stop after ``epoch``."""
        if epoch not in self.rungs or not best:
            return []
        values = np.array([best[k] for k in best], dtype=float)
        if np.isnan(values).all():
            return []
        cutoff = np.nanpercentile(values, (1 - 1 / self.reduction_factor) * 100)
        return [k for k, v in best.items() if epochs[k] > epoch and v < cutoff]
