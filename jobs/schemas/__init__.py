"""Typed configs of the pipeline stages, one light module per stage (pydantic only, no torch/ray).

``jobs.schemas.<stage>.Config`` validates the YAML of ``jobs.<stage>``; keeping them apart from the
jobs lets ``ue validate`` check a whole pipeline without importing torch or Ray.
"""

from __future__ import annotations

import importlib

from pydantic import Field, field_validator

from ue.config import ConfigModel, ModelConfig, RayResources, RunConfig
from ue.registry import unknown_name_message

FROM_FINETUNE = "finetune"
"""``adapter`` value of the extract and score stages meaning this run's ``<run>/finetune/adapter``."""
STAGES = ("finetune", "extract", "fit_heads", "tune", "score", "report", "serve")
"""Pipeline stages in their natural order (serve runs until stopped, so it comes last)."""


def config_class(stage: str) -> type[ConfigModel]:
    """The config model of ``stage``; an unknown stage raises ValueError with the known ones."""
    if stage not in STAGES:
        raise ValueError(unknown_name_message("stage", stage, STAGES))
    return importlib.import_module(f"jobs.schemas.{stage}").Config


class ModelStageConfig(ConfigModel):
    """What the stages that run the fine-tuned model over rows (extract, score) share: the run, the model
    + adapter, the batch size and the actor pool."""

    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig
    adapter: str | None = Field(
        None,
        description=f"PEFT adapter folder; {FROM_FINETUNE!r} = this run's finetune/adapter; null = the base model.",
    )
    batch_size: int = Field(64, description="Rows per forward pass (rows of similar length are batched together).")
    resources: RayResources = Field(
        default_factory=RayResources,
        description="num_workers = model replicas (actors); use_gpu puts one replica per GPU; "
        "cpus_per_worker = torch threads per replica.",
    )

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value
