"""Typed configs of the pipeline stages, one light module per stage (pydantic only, no torch/ray).

``jobs.schemas.<stage>.Config`` validates the YAML of ``jobs.<stage>``; keeping them apart from the
jobs lets ``ue validate`` check a whole pipeline without importing torch or Ray.
"""

from __future__ import annotations

import importlib

from ue.config import ConfigModel
from ue.registry import unknown_name_message

FROM_FINETUNE = "finetune"
"""``adapter`` value of the extract and score stages meaning this run's ``<run>/finetune/adapter``."""
STAGES = ("finetune", "extract", "fit_heads", "tune", "score", "report")
"""Pipeline stages in their natural order."""


def config_class(stage: str) -> type[ConfigModel]:
    """The config model of ``stage``; an unknown stage raises ValueError with the known ones."""
    if stage not in STAGES:
        raise ValueError(unknown_name_message("stage", stage, STAGES))
    return importlib.import_module(f"jobs.schemas.{stage}").Config
