"""Pipeline YAML: one run id and run directory, an ordered list of stages, each with its config.

>>> pipe = load_pipeline("jobs/configs/pipelines/demo.yaml", ["finetune.train.epochs=1"])  # doctest: +SKIP

``load_pipeline`` validates the pipeline file *and* every stage's config before anything starts and
reports every problem at once (:class:`PipelineError`), each naming its stage and dotted key.
Overrides on the command line address the pipeline (``run_id=x``) or one stage
(``<stage>.key.sub=value``). Every stage gets ``run.root`` / ``run.run_id`` from the pipeline, so all
stages share one run directory (DESIGN.md, "Run directory").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from cluster import preflight
from cluster.stages import STAGE_IMPLS, StageImpl
from jobs.schemas import STAGES
from ue.artifacts import Manifest, RunLayout, atomic_write_json
from ue.config import ConfigError, ConfigIssue, ConfigModel, load_config, merge, parse_overrides
from ue.registry import unknown_name_message

FORWARD_ENV_DEFAULT = ("UE_DATA_DIR", "UE_LOG_LEVEL", "HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE")
SECRET_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
"""Never forwarded into a job's environment: the token must not end up in job metadata or logs."""


class EntrypointResources(ConfigModel):
    """What the stage's job driver itself reserves (Ray's ``entrypoint_*``); its workers ask for their own."""

    num_cpus: float = Field(0, ge=0, description="CPUs for the driver process; 0 lets it run anywhere.")
    num_gpus: float = Field(0, ge=0, description="GPUs for the driver process (only if it uses one itself).")
    memory_gb: float | None = Field(None, gt=0, description="Memory reserved for the driver, in GiB.")
    custom: dict[str, float] = Field(default_factory=dict, description="Custom resources, e.g. {gpu_group: 0.01}.")

    def as_submit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``JobSubmissionClient.submit_job`` (zeros left out)."""
        kwargs: dict[str, Any] = {}
        if self.num_cpus:
            kwargs["entrypoint_num_cpus"] = self.num_cpus
        if self.num_gpus:
            kwargs["entrypoint_num_gpus"] = self.num_gpus
        if self.memory_gb:
            kwargs["entrypoint_memory"] = int(self.memory_gb * 2**30)
        if self.custom:
            kwargs["entrypoint_resources"] = dict(self.custom)
        return kwargs


class StageSpec(ConfigModel):
    """One entry of ``stages``: which stage, its config and how to run it."""

    stage: str = Field(description=f"One of {', '.join(STAGES)}.")
    config: str | dict[str, Any] = Field(
        default_factory=dict,
        description="Path to the stage's YAML (relative to the pipeline file) or an inline mapping.",
    )
    overrides: list[str] = Field(default_factory=list, description="key.sub=value applied over the config.")
    retries: int | None = Field(None, ge=0, description="Retries after a failure; None takes the pipeline's.")
    resources: EntrypointResources = Field(default_factory=EntrypointResources)

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        if value not in STAGE_IMPLS:
            raise ValueError(unknown_name_message("stage", value, STAGE_IMPLS.names()))
        return value


class SubmitConfig(ConfigModel):
    """How ``ue submit`` packages each stage as a Ray Job."""

    pip: list[str] | None = Field(
        None, description="Packages to pip-install for the job; None uses the cluster's existing environment."
    )
    env_vars: dict[str, str] = Field(default_factory=dict, description="Environment of every stage's job.")
    forward_env: list[str] = Field(
        default_factory=lambda: list(FORWARD_ENV_DEFAULT),
        description="Variables copied from the submitting shell into the job when set there.",
    )
    excludes: list[str] = Field(default_factory=list, description="More paths to leave out of the uploaded repo.")

    @field_validator("env_vars", "forward_env")
    @classmethod
    def _no_secrets(cls, value: Any) -> Any:
        leaked = sorted(set(value) & set(SECRET_ENV))
        if leaked:
            raise ValueError(f"must not pass {', '.join(leaked)} to jobs; the cluster holds its own token")
        return value


class MlflowConfig(ConfigModel):
    """Where ``ue run`` and ``ue submit`` log the pipeline (``cluster.tracking``)."""

    uri: str = Field(description="MLflow tracking URI, e.g. file:./mlruns or http://mlflow:5000.")
    experiment: str = Field("ueray", description="Experiment name; created when missing.")

    @field_validator("uri", "experiment")
    @classmethod
    def _given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty, e.g. uri: file:./mlruns")
        return value


class TrackingConfig(ConfigModel):
    """Experiment tracking of a pipeline run; needs the tracking extra (pip install 'ueray[tracking]')."""

    mlflow: MlflowConfig | None = Field(None, description="Log each stage's config, metrics and outputs to MLflow.")


class PipelineConfig(ConfigModel):
    """A pipeline file: run id, run root, retry policy and the ordered stages."""

    run_id: str = Field(description="Name of the run directory under root, and the prefix of job ids.")
    root: str = Field("runs", description="Folder holding runs (relative to where `ue` is started) or a URI.")
    retries: int = Field(1, ge=0, description="Default retries of a failed stage.")
    backoff_s: float = Field(5.0, ge=0, description="Wait before the first retry, in seconds.")
    backoff_factor: float = Field(2.0, ge=1, description="Each further retry waits this much longer.")
    max_backoff_s: float = Field(300.0, ge=0, description="Longest wait between retries.")
    stages: list[StageSpec] = Field(min_length=1, description="Stages in the order they run.")
    submit: SubmitConfig = Field(default_factory=SubmitConfig)
    tracking: TrackingConfig | None = Field(None, description="Experiment tracking (ue run, ue submit); "
                                            "null = off.")

    @field_validator("run_id")
    @classmethod
    def _plain_run_id(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("must be a plain folder name, e.g. sst2-minilm-seed0")
        return value

    @field_validator("stages")
    @classmethod
    def _unique_and_ordered(cls, stages: list[StageSpec]) -> list[StageSpec]:
        # A field validator (not a model one) so these errors come together with other fields' errors.
        names = [s.stage for s in stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"stage(s) {', '.join(repeated)} appear more than once; each stage runs once per run")
        builtin = [n for n in names if n in STAGES]
        if builtin != sorted(builtin, key=STAGES.index):
            raise ValueError(f"stages must keep the order {' -> '.join(STAGES)}; got {' -> '.join(builtin)}")
        return stages

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * self.backoff_factor ** (failures - 1))


@dataclass(frozen=True)
class Problem:
    """One problem found while validating a pipeline; ``where`` names the stage entry or "pipeline"."""

    where: str
    issue: ConfigIssue

    def __str__(self) -> str:
        return f"[{self.where}] {self.issue}"


class PipelineError(ValueError):
    """Every problem of a pipeline and its stage configs, found in one pass."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        plural = "" if len(self.problems) == 1 else "s"
        lines = "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem{plural} in pipeline:{lines}")


@dataclass(frozen=True)
class PlannedStage:
    """A validated stage: its entry, implementation, resolved config and retry count."""

    spec: StageSpec
    impl: StageImpl
    cfg: ConfigModel
    retries: int

    @property
    def name(self) -> str:
        return self.spec.stage


@dataclass(frozen=True)
class Pipeline:
    """A pipeline ready to run: every stage's config validated, ``root`` made absolute."""

    path: Path
    config: PipelineConfig
    stages: list[PlannedStage]
    root: str

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def is_local(self) -> bool:
        """Whether this machine can read the run directory (a path, not a URI)."""
        return "://" not in self.root

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.root, self.run_id)


def resolve_root(root: str) -> str:
    """An absolute path for a local root (jobs may run in another working directory); URIs as given."""
    return root if "://" in root else str(Path(root).expanduser().resolve())


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Command-line overrides split into the pipeline's and each stage's (``<stage>.key=value``)."""
    pipeline: list[str] = []
    per_stage: dict[str, list[str]] = {}
    for item in overrides:
        head, dot, rest = item.partition(".")
        if dot and head in STAGE_IMPLS and "=" in rest and "=" not in head:
            per_stage.setdefault(head, []).append(rest)
        else:
            pipeline.append(item)
    return pipeline, per_stage


def load_pipeline(path: str | os.PathLike[str], overrides: Sequence[str] = (), *, check_files: bool = True) -> Pipeline:
    """Validate a pipeline file and every stage config in it, then the checks of ``cluster.preflight``
    (``check_files``: also the score stage's head folders and corpus paths as this machine sees them;
    off for a submission, whose paths are the cluster's).

    Raises:
        PipelineError: listing every problem, e.g.
            ``[stages.1 fit_heads] overrides: heads: unknown key (got ...; allowed: ...)``.
    """
    path = Path(path)
    pipeline_overrides, stage_overrides = split_overrides(overrides)
    problems: list[Problem] = []
    config: PipelineConfig | None = None
    try:
        config = load_config(PipelineConfig, path, overrides=pipeline_overrides)
    except ConfigError as exc:
        problems += [Problem("pipeline", issue) for issue in exc.errors]
    specs = _stage_specs(config, path)
    if specs is None:  # unreadable or shapeless file: nothing more to check
        raise PipelineError(problems)
    run_id = config.run_id if config else "unchecked"
    root = resolve_root(config.root if config else "runs")
    present = {spec.stage for _, spec in specs}
    for stage in sorted(set(stage_overrides) - present):
        hint = f"its stages: {', '.join(sorted(present))}"
        issue = ConfigIssue("overrides", stage, "this stage is not in the pipeline", hint=hint)
        problems.append(Problem("pipeline", issue))
    planned: list[PlannedStage] = []
    for index, spec in specs:
        impl = STAGE_IMPLS.get(spec.stage)
        try:
            cfg = _stage_config(spec, impl, path.parent, root, run_id, stage_overrides.get(spec.stage, []))
        except ConfigError as exc:
            inline = f"{path} (stages.{index}.config)"
            problems += [Problem(f"stages.{index} {spec.stage}", replace(issue, source=inline) if issue.source ==
                                 "<data>" else issue) for issue in exc.errors]
            continue
        retries = spec.retries if spec.retries is not None else (config.retries if config else 0)
        planned.append(PlannedStage(spec, impl, cfg, retries))
    if problems or config is None:
        raise PipelineError(problems)
    pipe = Pipeline(path, config, planned, root)
    problems = preflight.check(pipe, check_files=check_files)
    if problems:
        raise PipelineError(problems)
    return pipe


def _stage_specs(config: PipelineConfig | None, path: Path) -> list[tuple[int, StageSpec]] | None:
    """The stage entries to check: all of them, or (when the pipeline has errors) those valid alone."""
    if config is not None:
        return list(enumerate(config.stages))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    entries = raw.get("stages") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        return [] if isinstance(raw, dict) else None
    specs = []
    for index, entry in enumerate(entries):
        try:
            specs.append((index, StageSpec.model_validate(entry)))
        except ValidationError:
            continue  # already reported under stages.<index> by the pipeline's own validation
    return specs


def _stage_config(
    spec: StageSpec, impl: StageImpl, base: Path, root: str, run_id: str, extra: list[str]
) -> ConfigModel:
    try:
        model = impl.config_class()
    except ImportError as exc:
        raise ConfigError([ConfigIssue(impl.schema, "", f"cannot import the stage's config model ({exc})")]) from None
    path = None
    if isinstance(spec.config, str):
        path = Path(spec.config).expanduser()
        path = path if path.is_absolute() else base / path
    data = spec.config if isinstance(spec.config, dict) else None
    # The pipeline owns the run directory: whatever a stage file says about run.root/run_id loses.
    tree = merge(parse_overrides([*spec.overrides, *extra]), {"run": {"root": root, "run_id": run_id}})
    return load_config(model, path, data=data, overrides=tree)


def record_pipeline(layout: RunLayout, **fields: Any) -> None:
    """Merge ``fields`` into the manifest's ``pipeline`` entry.

    Only called between stages: a stage's process is the only writer while it runs (Manifest).
    """
    doc = Manifest(layout).read()
    doc["pipeline"] = {**doc.get("pipeline", {}), **fields}
    atomic_write_json(layout.manifest, doc)
