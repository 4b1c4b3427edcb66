"""Search spaces from YAML: which head, its fixed parameters and the searched ones.

A space is data (pydantic + YAML only, so configs validate without importing Ray or torch)::

    head: alien
    params: {epochs: 20, batch_size: 128}      # fixed for every trial
    space:                                     # searched, one domain each
      alpha: {grid: [0.01, 0.1, 1]}
      lr: {loguniform: [1.0e-5, 1.0e-3]}

Domains: ``grid`` (enumerated by grid search, drawn uniformly by random search), ``choice``,
``uniform`` and ``loguniform`` (drawn by random search). Presets ship as YAML files in
``tuning/presets/`` (METHODS.md, "Training of both heads"): the papers' grids ``alien_paper`` (27
configs) and ``adue_paper`` (144), and the ablations ``ablation_bce`` (BCE only),
``ablation_bce_l2sp``, ``ablation_bce_reg`` and ``ablation_random_init``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ue.config import ConfigModel, load_config
from ue.registry import unknown_name_message

Algorithm = Literal["grid", "random"]
PRESET_DIR = Path(__file__).resolve().parent / "presets"
RESERVED = ("classifier", "seed")
"""Head parameters a space may not set: the classifier comes from the features, seeds from ``seeds``."""


class Domain(ConfigModel):
    """One searched parameter: exactly one of ``grid``, ``choice``, ``uniform``, ``loguniform``."""

    grid: list[Any] | None = Field(None, description="Values enumerated by grid search.")
    choice: list[Any] | None = Field(None, description="Values drawn uniformly by random search.")
    uniform: tuple[float, float] | None = Field(None, description="[low, high] drawn uniformly.")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], 0 < low, drawn log-uniformly.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Domain:
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of grid, choice, uniform, loguniform (got {', '.join(given) or 'none'}), "
                "e.g. {grid: [0.01, 0.1, 1]} or {loguniform: [1.0e-5, 1.0e-3]}"
            )
        return self

    @field_validator("grid", "choice")
    @classmethod
    def _some_values(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None and not value:
            raise ValueError("must list at least one value")
        return value

    @field_validator("uniform", "loguniform")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError("must be [low, high] with low < high")
        return value

    @field_validator("loguniform")
    @classmethod
    def _positive(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] <= 0:
            raise ValueError("low must be > 0 for a log scale; use uniform to include 0")
        return value

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None)

    def to_tune(self, algorithm: Algorithm) -> Any:
        """The Ray Tune domain: grid search enumerates ``grid``; random search draws every domain."""
        from ray import tune

        if self.grid is not None:
            return tune.grid_search(self.grid) if algorithm == "grid" else tune.choice(self.grid)
        if self.choice is not None:
            return tune.choice(self.choice)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        return tune.loguniform(*self.loguniform)


class SearchSpace(ConfigModel):
    """A head, the parameters every trial shares and the searched ones (disjoint)."""

    head: str = Field(description="Registered trained head (ue.heads.HEADS), e.g. alien or adue.")
    description: str = Field("", description="What the space reproduces, with its source.")
    params: dict[str, Any] = Field(default_factory=dict, description="Head parameters fixed for every trial.")
    space: dict[str, Domain] = Field(default_factory=dict, description="Head parameter -> searched domain.")

    @model_validator(mode="after")
    def _disjoint_and_allowed(self) -> SearchSpace:
        both = sorted(set(self.params) & set(self.space))
        if both:
            raise ValueError(f"{', '.join(both)} both fixed (params) and searched (space); keep one")
        reserved = sorted(set(RESERVED) & (set(self.params) | set(self.space)))
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} cannot be set here: the classifier comes from the cached features "
                "and head seeds from the search's `seeds` list"
            )
        return self

    def override(
        self, *, head: str | None = None, params: dict[str, Any] | None = None, space: dict[str, Any] | None = None
    ) -> SearchSpace:
        """A copy with ``params`` / ``space`` entries added or replaced; a key given in one leaves the other,
        so ``params: {lr: 1e-4}`` over a preset fixes the searched ``lr``."""
        params, space = dict(params or {}), dict(space or {})
        merged_params = {k: v for k, v in self.params.items() if k not in space} | params
        merged_space = {k: v.model_dump(exclude_none=True) for k, v in self.space.items() if k not in params}
        return SearchSpace.model_validate({
            "head": head or self.head, "description": self.description,
            "params": merged_params, "space": merged_space | space,
        })

    def check(self, algorithm: Algorithm) -> None:
        """Raise ValueError if grid search is asked to enumerate a domain it cannot."""
        check_algorithm(self.space, algorithm)

    def num_configs(self, algorithm: Algorithm, num_samples: int = 1) -> int:
        """Distinct head configurations a search tries (seeds and feature runs not counted)."""
        if algorithm == "random":
            return num_samples
        return math.prod(len(d.grid or ()) for d in self.space.values())

    def param_space(
        self, algorithm: Algorithm, *, seeds: list[int], replicas: list[str] | None = None
    ) -> dict[str, Any]:
        """Ray Tune ``param_space``: fixed params, searched domains, a grid over ``seed`` and over the
        feature ``replica`` (several backbone fine-tunes), so every configuration runs on each pair."""
        from ray import tune

        self.check(algorithm)
        out: dict[str, Any] = dict(self.params)
        out.update({k: d.to_tune(algorithm) for k, d in self.space.items()})
        out["seed"] = tune.grid_search(list(seeds))
        if replicas:
            out["replica"] = tune.grid_search(list(replicas))
        return out


def check_algorithm(space: dict[str, Domain], algorithm: Algorithm) -> None:
    """Raise ValueError naming the domains grid search cannot enumerate (every kind but ``grid``)."""
    sampled = sorted(k for k, d in space.items() if d.kind != "grid")
    if algorithm == "grid" and sampled:
        raise ValueError(
            f"grid search enumerates only grid domains, but {', '.join(sampled)} "
            "are sampled: set algorithm: random with num_samples, or give them as {grid: [...]}"
        )


def preset_names() -> list[str]:
    """Names of the shipped presets (``tuning/presets/<name>.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> SearchSpace:
    """The shipped preset ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in preset_names():
        raise ValueError(unknown_name_message("search preset", name, preset_names()))
    return load_config(SearchSpace, PRESET_DIR / f"{name}.yaml")


def load_space(path: str | Path) -> SearchSpace:
    """A search space from a YAML file of the form shown in the module docstring."""
    return load_config(SearchSpace, path)

