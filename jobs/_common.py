"""What every job shares: its command line, the manifest bookkeeping and a local Ray.

Each stage module ``jobs/<stage>.py`` defines a config model and ``run(cfg) -> dict`` and ends with
``if __name__ == "__main__": job_main(Config, run)``, so ``python -m jobs.<stage> --config X.yaml
key.sub=value`` works the same on a laptop and as a Ray Job entrypoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from jobs.schemas import FROM_FINETUNE
from ue.artifacts import Manifest, RunLayout, atomic_write_text, make_private, run_lock
from ue.config import ConfigError, ConfigModel, dump_config, load_config, stage_hash

C = TypeVar("C", bound=ConfigModel)
log = logging.getLogger("ue.jobs")


def parse_args(argv: Sequence[str] | None, stage: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{stage}", description=f"ueray stage: {stage}")
    parser.add_argument("--config", help="YAML config of the stage")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    return parser.parse_args(argv)


def job_main(config_cls: type[C], run: Callable[[C], dict[str, Any]], argv: Sequence[str] | None = None) -> None:
    """Command-line entry of a stage: load + validate the config, run, exit non-zero on failure."""
    logging.basicConfig(level=os.environ.get("UE_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
    # Under ``python -m jobs.<stage>`` the module is ``__main__``; its spec keeps the real name.
    spec = getattr(sys.modules.get(run.__module__), "__spec__", None)
    stage = (spec.name if spec is not None else run.__module__).rsplit(".", 1)[-1]
    args = parse_args(argv, stage)
    try:
        cfg = load_config(config_cls, args.config, overrides=args.overrides)
    except ConfigError as e:
        print(f"config error in stage {stage}:\n{e}", file=sys.stderr)
        raise SystemExit(2) from None
    run(cfg)


def adapter_dir(adapter: str | None, layout: RunLayout) -> str | None:
    """The PEFT adapter folder an ``adapter`` config value names (``finetune``: this run's), checked to hold one."""
    if adapter is None:
        return None
    path = layout.adapter_dir if adapter == FROM_FINETUNE else Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"adapter={adapter!r}: {path} holds no PEFT adapter (adapter_config.json); run the finetune "
            "stage first, point adapter at an adapter folder, or set adapter=null to use the base model"
        )
    return str(path)


def stage_layout(cfg: Any) -> RunLayout:
    return RunLayout(cfg.run.root, cfg.run.run_id)


def run_stage(stage: str, cfg: C, body: Callable[[RunLayout], dict[str, Any]]) -> dict[str, Any]:
    """Run ``body`` under manifest bookkeeping: skip when done with the same config, else mark
    running -> done (with outputs and timing) or failed (with the error), and save the config.
    The run's lock (``ue.artifacts.run_lock``) is held throughout: a second writer fails at once."""
    layout = stage_layout(cfg)
    with run_lock(layout.run_dir, holder=f"stage {stage} of run {layout.run_id}"):
        return _run_locked(stage, cfg, body, layout)


def _run_locked(stage: str, cfg: C, body: Callable[[RunLayout], dict[str, Any]], layout: RunLayout) -> dict[str, Any]:
    manifest = Manifest(layout)
    digest = stage_hash(cfg)
    if not cfg.run.force and manifest.is_done(stage, digest):
        log.info("stage %s already done for run %s; skipping", stage, layout.run_id)
        return manifest.stage(stage).get("outputs", {})
    layout.stage_dir(stage).mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.stage_dir(stage) / "config.yaml", dump_config(cfg))
    started = time.time()
    manifest.update(stage, status="running", config_hash=digest, started=started, error=None)
    try:
        outputs = body(layout)
    except KeyboardInterrupt:
        manifest.update(stage, status="interrupted", error="interrupted by Ctrl-C; rerun to resume")
        raise
    except BaseException as e:
        manifest.update(stage, status="failed", error="".join(traceback.format_exception_only(e)).strip())
        raise
    manifest.update(stage, status="done", finished=time.time(), seconds=round(time.time() - started, 3),
                    outputs=outputs)
    return outputs


def init_ray(num_cpus: int | None = None) -> bool:
    """Connect to the cluster named by ``RAY_ADDRESS`` or start a local Ray; True if we started it."""
    if not os.environ.get("RAY_ADDRESS"):
        loopback_only()
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": os.environ.get("UE_RAY_LOGS", "0") == "1"}
    if not os.environ.get("RAY_ADDRESS"):
        # "local" always starts a fresh in-process cluster; a bare init() would join any head that
        # `ray start` recorded on this machine, including someone else's.
        kwargs.update(address="local", num_cpus=num_cpus, include_dashboard=False)
    ray.init(**kwargs)
    _keep_token_private()
    return True


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_only(env: dict[str, str] | None = None) -> None:
    """Make a Ray started from here (or from ``env``) a single-machine one on 127.0.0.1.

    Ray takes the machine's outward address as the node IP, even for ``--node-ip-address
    127.0.0.1``, and its GCS, raylet, workers and agents then listen on every interface. With
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its single-machine mode, read when ``ray`` is first
    imported) the node IP is loopback and so is every listener. Only for a Ray started here: a driver
    that joins a cluster must stay reachable from the other nodes.
    """
    (os.environ if env is None else env).setdefault(LOOPBACK_ENV, "0")


def _keep_token_private() -> None:
    """Ray's own start writes ``~/.ray/auth_token`` with mode 0644: make it 0600."""
    old = make_private(Path.home() / ".ray" / "auth_token")
    if old is not None:
        log.warning("~/.ray/auth_token was mode %o; tightened to 600 (it holds the Ray auth token)", old)
