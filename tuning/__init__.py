"""Ray Tune searches of uncertainty-head settings: spaces from YAML, trainables, ``run_search``.

>>> from tuning import load_preset
>>> load_preset("alien_paper").num_configs("grid")
27

Importing ``tuning`` (and ``tuning.space``) loads neither Ray nor torch, so configs that name search
spaces validate fast; the other names are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from tuning.space import Domain, SearchSpace, load_preset, load_space, preset_names

_LAZY = {
    "FeatureSet": "tuning.trainable",
    "fit_head_trial": "tuning.trainable",
    "head_trainable": "tuning.trainable",
    "SearchInterrupted": "tuning.search",
    "TrialsFailed": "tuning.search",
    "count_trials": "tuning.search",
    "run_search": "tuning.search",
    "run_packed_search": "tuning.search",
    "packed_head_trainable": "tuning.trainable",
    "cut_packs": "tuning.packing",
    "expand_configs": "tuning.packing",
    "SuccessiveHalving": "tuning.packing",
    "best_config": "tuning.select",
    "summarise": "tuning.select",
}

__all__ = ["Domain", "SearchSpace", "load_preset", "load_space", "preset_names", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuning' has no attribute {name!r}")
