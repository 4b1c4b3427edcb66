"""Config of ``jobs.tune``: Ray Tune searches of head settings and of fine-tuning loss weights.

Each head search names a preset space (``tuning/presets``) and/or gives its own ``head``, ``params``
and ``space``; entries given here override the preset's. Selection uses validation ROC-AUC only.
A fine-tuning search names a ``jobs.finetune`` YAML and searches dotted keys of it (e.g.
``train.loss_params.eps_max`` of UAL); every trial is one fine-tuning run, selected on its validation
metric (``train.select_metric``).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from jobs.schemas.finetune import Config as FinetuneConfig
from tuning.space import Domain, SearchSpace, check_algorithm, load_preset, preset_names
from ue.config import ConfigError, ConfigModel, RunConfig, load_config
from ue.registry import unknown_name_message


def _plain_name(value: str, example: str) -> str:
    if not value or "/" in value or value.startswith("."):
        raise ValueError(f"must be a plain folder name, e.g. {example}")
    return value


class HeadSearch(ConfigModel):
    """One search over a trained head's settings; results in ``tune/<name>/``, the refit in ``heads/<name>/``."""

    name: str = Field(description="Folder name of the results under tune/ and of the refitted head under heads/.")
    preset: str | None = Field(None, description="Shipped space (tuning/presets), e.g. alien_paper, adue_paper.")
    head: str | None = Field(None, description="Head to search (alien, adue); default: the preset's.")
    params: dict[str, Any] = Field(default_factory=dict, description="Head parameters fixed for every trial.")
    space: dict[str, Domain] = Field(default_factory=dict, description="Searched head parameters.")
    algorithm: Literal["grid", "random"] = Field(
        "grid", description="grid: every combination of the grid domains; random: num_samples draws."
    )
    num_samples: int = Field(1, description="Random search: configurations drawn. Grid search: must be 1.")
    search_seed: int = Field(0, description="Seed of the random draws.")
    scheduler: Literal["fifo", "asha"] = Field(
        "fifo", description="fifo: every trial runs all epochs; asha: bad trials stop early."
    )
    grace_period: int = Field(2, description="ASHA: epochs every trial runs before it can be stopped.")
    reduction_factor: float = Field(3.0, description="ASHA: keep 1 in reduction_factor trials per rung.")
    seeds: list[int] = Field(default_factory=lambda: [0], description="Head seeds; each config runs once per seed.")
    feature_runs: list[str] = Field(
        default_factory=list,
        description="Other run ids under the same root (other backbone fine-tunes) whose features every "
        "config also runs on; results are mean +- std over seeds x runs.",
    )
    pack: bool = Field(
        True, description="Train many configurations in one trial as one batched pack (ue.heads.fit_packed): the "
        "grid is cut into packs, one trial each; asha then halves each pack at ASHA's rungs. false: one trial "
        "per configuration, Ray Tune's ASHA.",
    )
    configs_per_trial: int | None = Field(
        None, description="With pack: at most this many configurations per trial; default: the grid spread "
        "over the trials that run at once (max_concurrent_trials, or CPUs / cpus_per_trial).",
    )
    cpus_per_trial: float = Field(1.0, description="CPUs (and torch threads) reserved by each trial.")
    max_concurrent_trials: int | None = Field(None, description="At most this many trials at once; default: CPUs.")
    custom_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Extra Ray resources each trial holds, e.g. {cpu_node: 0.01} keeps the trials on the CPU "
        "worker group of cluster.yaml; leave empty on a local Ray, which has no such resource.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_folder(cls, value: str) -> str:
        return _plain_name(value, "alien_paper")

    @field_validator("custom_resources")
    @classmethod
    def _custom_only(cls, value: dict[str, float]) -> dict[str, float]:
        builtin = sorted(k for k in value if k.lower() in ("cpu", "gpu", "memory"))
        if builtin:
            raise ValueError(f"{', '.join(builtin)}: set CPUs with cpus_per_trial; trials never use GPUs")
        if any(v <= 0 for v in value.values()):
            raise ValueError("amounts must be > 0, e.g. {cpu_node: 0.01}")
        return value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in preset_names():
            raise ValueError(unknown_name_message("preset", value, preset_names()))
        return value

    @field_validator("num_samples", "grace_period")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value

    @field_validator("reduction_factor")
    @classmethod
    def _halving(cls, value: float) -> float:
        if value < 2:
            raise ValueError("must be >= 2 (3 keeps the best third of the trials at each rung)")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value) or min(value) < 0:
            raise ValueError("must list distinct non-negative seeds, e.g. [0, 1, 2, 3, 4]")
        return value

    @field_validator("feature_runs")
    @classmethod
    def _run_ids(cls, value: list[str]) -> list[str]:
        for run_id in value:
            _plain_name(run_id, "sst2-minilm-seed1")
        if len(set(value)) != len(value):
            raise ValueError("lists a run twice")
        return value

    @field_validator("cpus_per_trial")
    @classmethod
    def _some_cpu(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be > 0; trials run on CPU actors")
        return value

    @field_validator("max_concurrent_trials", "configs_per_trial")
    @classmethod
    def _some_trials(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be >= 1, or null to let the CPUs decide")
        return value

    @model_validator(mode="after")
    def _space_resolves(self) -> HeadSearch:
        if self.preset is None and self.head is None:
            raise ValueError(f"give a preset ({', '.join(preset_names())}) or a head with its space")
        if self.algorithm == "grid" and self.num_samples != 1:
            raise ValueError("num_samples is for algorithm: random; grid search tries every combination once")
        self.resolved().check(self.algorithm)
        return self

    def resolved(self) -> SearchSpace:
        """The preset (if any) with this search's head, params and space applied over it."""
        space = {k: d.model_dump(exclude_none=True) for k, d in self.space.items()}
        if self.preset is None:
            return SearchSpace.model_validate({"head": self.head, "params": self.params, "space": space})
        return load_preset(self.preset).override(head=self.head, params=self.params, space=space)


class FinetuneSearch(ConfigModel):
    """Tune driving ``jobs.finetune``: one fine-tuning run per trial, in ``tune/<name>/runs/<trial>/``."""

    name: str = Field(description="Folder name of the results under tune/.")
    config: str = Field(description="The jobs.finetune YAML every trial starts from.")
    overrides: list[str] = Field(
        default_factory=list, description="key=value applied to that YAML first, e.g. train.epochs=1."
    )
    space: dict[str, Domain] = Field(
        description="Dotted fine-tuning config keys -> domains, e.g. train.loss_params.eps_max: {grid: [0.1, 0.2]}; "
        "train.seed as a grid repeats every configuration over seeds."
    )
    algorithm: Literal["grid", "random"] = Field("grid", description="As for head searches.")
    num_samples: int = Field(1, description="Random search: configurations drawn. Grid search: must be 1.")
    search_seed: int = Field(0, description="Seed of the random draws.")
    cpus_per_trial: float = Field(
        0.25, description="CPUs held by the trial itself, which mostly waits: its fine-tuning workers reserve "
        "resources.* on their own, so a whole CPU here could leave them none on a small node.",
    )
    max_concurrent_trials: int = Field(1, description="Fine-tuning runs at once.")

    @field_validator("cpus_per_trial")
    @classmethod
    def _some_cpu(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be > 0 (Ray Tune needs a resource for every trial); 0.25 is enough to wait")
        return value

    @field_validator("name")
    @classmethod
    def _name_is_folder(cls, value: str) -> str:
        return _plain_name(value, "ual_eps")

    @field_validator("space")
    @classmethod
    def _searchable_keys(cls, value: dict[str, Domain]) -> dict[str, Domain]:
        if not value:
            raise ValueError("must search at least one key, e.g. {train.loss_params.eps_max: {grid: [0.1, 0.2]}}")
        fixed = sorted(k for k in value if k.split(".")[0] == "run")
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: the run directory of each trial is set by the tune stage")
        return value

    @model_validator(mode="after")
    def _trials_are_valid_finetune_configs(self) -> FinetuneSearch:
        if self.algorithm == "grid" and self.num_samples != 1:
            raise ValueError("num_samples is for algorithm: random; grid search tries every combination once")
        check_algorithm(self.space, self.algorithm)
        self.trial_config(self.example_values())
        return self

    def example_values(self) -> dict[str, Any]:
        """One value of every searched key (the first of a list, the low end of a range)."""
        return {k: (d.grid or d.choice or d.uniform or d.loguniform)[0] for k, d in self.space.items()}

    def trial_config(self, values: dict[str, Any], **run: Any) -> FinetuneConfig:
        """The fine-tuning config of one trial: the YAML, ``overrides``, the searched values, ``run``.

        Raises:
            ValueError: naming every problem (a searched key the fine-tuning config does not have, a value
                it rejects).
        """
        extra = {**values, **{f"run.{k}": v for k, v in run.items()}}
        try:
            return load_config(FinetuneConfig, self.config, overrides=[*self.overrides,
                               *(f"{k}={_yaml_value(v)}" for k, v in extra.items())])
        except ConfigError as e:
            raise ValueError(f"the fine-tuning config of a trial is invalid: {e}") from None


def _yaml_value(value: Any) -> str:
    return json.dumps(value)  # JSON scalars are YAML, so the override parser reads them back exactly


class Config(ConfigModel):
    """Run every search of a run directory on a local Ray or a cluster's CPU workers."""

    run: RunConfig = Field(default_factory=RunConfig)
    searches: list[HeadSearch] = Field(default_factory=list, description="Head searches, run one after another.")
    finetune: list[FinetuneSearch] = Field(
        default_factory=list, description="Searches of fine-tuning settings, run after the head searches."
    )
    num_cpus: int | None = Field(None, description="CPUs of the local Ray this job starts (ignored on a cluster).")
    resume: bool = Field(True, description="Resume an interrupted search instead of starting it over.")

    @model_validator(mode="after")
    def _distinct_searches(self) -> Config:
        names = [s.name for s in (*self.searches, *self.finetune)]
        if not names:
            raise ValueError("list at least one search under searches, e.g. [{name: alien, preset: alien_paper}], "
                             "or under finetune")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"search name(s) {', '.join(repeated)} used twice; each needs its own folder under tune/")
        return self

    @field_validator("num_cpus")
    @classmethod
    def _positive_cpus(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be >= 1, or null to use every core")
        return value
