"""Tiny stages for the runner tests: no model and no Ray; they count their runs, sleep and fail on demand.

Registered only by the tests (``register()``), never by the product. As a Ray Job they run as
``python -m tests.cluster.toy <stage> key=value ...``.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from cluster.stages import STAGE_IMPLS, StageImpl, register_stage
from jobs._common import job_main, run_stage
from ue.artifacts import RunLayout
from ue.config import ConfigModel, RunConfig

TOY_STAGES = ("toy_a", "toy_b", "toy_c")


class Config(ConfigModel):
    run: RunConfig = Field(default_factory=RunConfig)
    seconds: float = Field(0.0, ge=0, description="How long the stage sleeps.")
    fail_times: int = Field(0, ge=0, description="Fail this many attempts before succeeding.")
    message: str = "hello from a toy stage"
    ignore_sigint: bool = Field(False, description="Leave SIGINT ignored, as Ray Tune's leftover handler does.")
    abort_on_sigint: bool = Field(False, description="Take SIGINT with an own handler and end with SystemExit(1) "
                                                     "once it came, as Ray Train's graceful abort does.")


def count_file(layout: RunLayout, stage: str) -> Path:
    return layout.run_dir / "toy" / f"{stage}.count"


def runs_of(root: Path, run_id: str, stage: str) -> int:
    """How many times ``stage`` has started in this run."""
    path = count_file(RunLayout(root, run_id), stage)
    return len(path.read_text().splitlines()) if path.exists() else 0


def _make_run(stage: str) -> Any:
    def run(cfg: Config) -> dict[str, Any]:
        def body(layout: RunLayout) -> dict[str, Any]:
            path = count_file(layout, stage)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(f"{time.time()}\n")
            attempt = len(path.read_text().splitlines())
            print(f"{stage}: {cfg.message} (attempt {attempt})", flush=True)
            if cfg.ignore_sigint:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            if cfg.abort_on_sigint:
                _sleep_until_sigint(cfg.seconds)
            else:
                time.sleep(cfg.seconds)
            if attempt <= cfg.fail_times:
                raise RuntimeError(f"{stage} fails on purpose (attempt {attempt} of {cfg.fail_times} failures)")
            return {"attempt": attempt}

        return run_stage(stage, cfg, body)

    run.__name__ = f"run_{stage}"
    return run


def _sleep_until_sigint(seconds: float) -> None:
    aborted: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: aborted.append(signum))
    deadline = time.monotonic() + seconds
    while not aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    if aborted:
        print("aborting gracefully", flush=True)
        sys.exit(1)


for _stage in TOY_STAGES:
    globals()[f"run_{_stage}"] = _make_run(_stage)


def register() -> None:
    """Make the toy stages known to pipelines (idempotent), plus ``toy_missing`` whose module does not exist."""
    for stage in TOY_STAGES:
        if stage not in STAGE_IMPLS:
            register_stage(StageImpl(stage, "tests.cluster.toy:Config", "tests.cluster.toy", entry=f"run_{stage}",
                                     argv=(stage,), uses_ray=False))
    if "toy_missing" not in STAGE_IMPLS:
        register_stage(StageImpl("toy_missing", "tests.cluster.toy:Config", "tests.cluster.no_such_module",
                                 uses_ray=False))


if __name__ == "__main__":
    job_main(Config, globals()[f"run_{sys.argv[1]}"], argv=sys.argv[2:])
