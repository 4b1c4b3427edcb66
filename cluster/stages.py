"""Which stages a pipeline may name, and how the runner reaches each one.

A stage is a module with ``run(cfg) -> dict`` that runs as ``python -m <module>`` (DESIGN.md, jobs/).
The runner needs three things from it: its config model (light: pydantic only, so ``ue validate``
imports no torch), its ``run`` function for the embedded mode, and its command line for a Ray Job.
Everything is named by import path and resolved only when used, so ``import cluster`` stays cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from jobs.schemas import STAGES
from ue.config import ConfigModel
from ue.registry import Registry


@dataclass(frozen=True)
class StageImpl:
    """How to validate, run in-process and submit one stage.

    Attributes:
        name: the stage name used in pipelines, manifests and submission ids.
        schema: ``"module:Class"`` of the config model (pydantic only).
        module: the module holding ``run(cfg)``; ``python -m <module>`` is its job entrypoint.
        entry: the name of the run function in ``module``.
        argv: arguments put before the overrides on the job's command line (for a module that hosts
            several stages and is told which one to run).
        uses_ray: whether the embedded runner must start Ray before running it in-process.
    """

    name: str
    schema: str
    module: str
    entry: str = "run"
    argv: tuple[str, ...] = ()
    uses_ray: bool = True

    def config_class(self) -> type[ConfigModel]:
        module, _, attr = self.schema.partition(":")
        return getattr(importlib.import_module(module), attr)

    def run_function(self) -> Any:
        """The stage's ``run(cfg) -> dict``; importing it may pull in torch and Ray."""
        return getattr(importlib.import_module(self.module), self.entry)

    def command(self) -> list[str]:
        """The job's command line up to its overrides."""
        return ["python", "-m", self.module, *self.argv]


STAGE_IMPLS: Registry[StageImpl] = Registry("stage")
"""Stages a pipeline may name. The built-in ones (jobs.schemas.STAGES); tests register tiny stages of their own."""


def register_stage(impl: StageImpl) -> StageImpl:
    """Add a stage (rejects a duplicate name); returns it for use as a one-liner."""
    return STAGE_IMPLS.register(impl.name)(impl)


for _name in STAGES:
    # The report stage only reads files and draws plots: no Ray needed.
    register_stage(StageImpl(_name, f"jobs.schemas.{_name}:Config", f"jobs.{_name}", uses_ray=_name != "report"))
