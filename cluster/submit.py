"""Cluster mode: each stage of a pipeline becomes a Ray Job, submitted and followed from here.

Jobs are named ``<run_id>-<stage>-<attempt>``; attempts keep counting across invocations of
``ue submit``, and a stage whose job is still pending or running is followed again rather than
submitted twice. Each job gets the repository as its working dir (without .git, .venv, runs/ and
data/), the pipeline's environment, the stage's entrypoint resources and metadata naming the run.
The job's command line carries the stage's fully resolved config as one JSON override per top-level
key, so the job validates exactly what the driver validated (and hashes it the same way).

Tracking (``tracking.mlflow``) is done here, by the submitting client, not inside the jobs: after each
job ends, the client logs the stage with ``cluster.tracking.MlflowTracker`` from the files the job
wrote under the run directory, which gives the same MLflow layout as ``ue run`` (one pipeline run, a
nested run per stage) with one implementation, and needs neither MLflow on the cluster nor a store the
cluster can reach. It needs the run directory to be readable here: a URI root (``s3://...``) is
refused before anything is submitted; a path root this machine does not see (a remote cluster's own
disk) gets each stage's config and status logged, with a warning that its metrics are missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from cluster.auth import AuthProblem, Token, missing_token_message, redact, rejected_token_message
from cluster.pipeline import Pipeline, PlannedStage, record_pipeline
from cluster.runner import StageFailed, StageOutcome, can_skip, submission_id
from cluster.tracking import MlflowTracker, TrackingError, end_tracking, open_tracker, track_stage
from ue.artifacts import Manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
UPLOAD_EXCLUDES = ["/.git", "/.venv", "/runs", "/data", "__pycache__", "*.egg-info", ".pytest_cache",
                   ".ruff_cache", "*.pyc"]
"""Left out of the uploaded working dir: history, the local environment, run outputs and datasets."""
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
META_RUN, META_STAGE, META_ATTEMPT = "ueray_run_id", "ueray_stage", "ueray_attempt"


class ClusterUnreachable(RuntimeError):
    """Nothing answers at the address."""


class StageStopped(RuntimeError):
    """A stage's job was stopped (``ue stop``); the pipeline does not retry a deliberate stop."""


@contextmanager
def _env_without(*names: str) -> Iterator[None]:
    """Hide environment variables for a moment: Ray lets RAY_ADDRESS override an explicit address."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class ClusterClient:
    """``JobSubmissionClient`` with our token and errors that say what to do."""

    def __init__(self, address: str, token: Token | None) -> None:
        from ray.job_submission import JobSubmissionClient

        self.address, self.token = address, token
        try:
            with self._errors(), _env_without("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
                self._client = JobSubmissionClient(address, headers=token.headers() if token else None)
        except (AuthProblem, ClusterUnreachable):
            raise
        except RuntimeError as exc:  # something answers, but not a (recent enough) Ray Jobs API
            raise ClusterUnreachable(f"{address} does not serve the Ray Jobs API ({exc})") from None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError:
            message = rejected_token_message if self.token else None
            raise AuthProblem(message(self.address, self.token) if message else missing_token_message(self.address)) \
                from None
        except ConnectionError:
            raise ClusterUnreachable(f"no Ray dashboard answers at {self.address}; check the address, or start "
                                     "a head here with `ue cluster start-local`") from None

    def submit(self, sid: str, entrypoint: str, runtime_env: dict[str, Any], metadata: dict[str, str],
               resources: dict[str, Any], *, agent_wait_s: float = 120.0) -> str:
        """Submit one job. While the head's job agent is not up yet (a fresh or busy head answers
        "No available agent"), keep trying for ``agent_wait_s``: nothing was submitted, nothing failed."""
        deadline = time.monotonic() + agent_wait_s
        while True:
            try:
                with self._errors():
                    return self._client.submit_job(entrypoint=entrypoint, submission_id=sid,
                                                   runtime_env=runtime_env, metadata=metadata, **resources)
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(2.0)

    def status(self, sid: str) -> str:
        with self._errors():
            return str(self._client.get_job_status(sid))

    def logs(self, sid: str) -> str:
        with self._errors():
            return redact(self._client.get_job_logs(sid), self.token)

    def follow(self, sid: str, write: Callable[[str], None]) -> None:
        """Pass the job's log to ``write`` chunk by chunk until the job ends."""

        async def consume() -> None:
            async for chunk in self._client.tail_job_logs(sid):
                write(redact(chunk, self.token))

        with self._errors():
            asyncio.run(consume())

    def stop(self, sid: str) -> bool:
        with self._errors():
            return bool(self._client.stop_job(sid))

    def jobs(self, run_id: str | None = None) -> list[Any]:
        """Job details (ueray's only, or one run's), oldest first."""
        with self._errors():
            found = self._client.list_jobs()
        mine = [j for j in found if (j.metadata or {}).get(META_RUN) and
                (run_id is None or j.metadata[META_RUN] == run_id)]
        return sorted(mine, key=lambda j: (j.start_time or 0, j.submission_id or ""))


def stage_entrypoint(stage: PlannedStage) -> str:
    """``python -m jobs.<stage> 'key={json}' ...``: the resolved config, one top-level key per item.

    JSON is valid YAML, which is what the job's override parser reads.
    """
    resolved = stage.cfg.model_dump(mode="json", by_alias=True)
    items = [f"{key}={json.dumps(value, separators=(',', ':'))}" for key, value in resolved.items()]
    return shlex.join([*stage.impl.command(), *items])


def runtime_env(pipe: Pipeline, working_dir: Path = REPO_ROOT) -> dict[str, Any]:
    """The Ray runtime_env of every stage's job."""
    submit = pipe.config.submit
    env_vars = {name: os.environ[name] for name in submit.forward_env if name in os.environ}
    env_vars.update(submit.env_vars)
    env_vars.setdefault("PYTHONUNBUFFERED", "1")  # logs reach `ue logs -f` as they are written
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": [*UPLOAD_EXCLUDES, *submit.excludes],
                           "env_vars": env_vars}
    if submit.pip is not None:
        env["pip"] = list(submit.pip)
    return env


def _attempts(client: ClusterClient, run_id: str, stage: str) -> dict[int, Any]:
    """Earlier jobs of this stage by attempt number."""
    found = {}
    for job in client.jobs(run_id):
        meta = job.metadata or {}
        if meta.get(META_STAGE) == stage and meta.get(META_ATTEMPT, "").isdigit():
            found[int(meta[META_ATTEMPT])] = job
    return found


def _wait(client: ClusterClient, sid: str, poll_s: float, sleep: Callable[[float], None]) -> str:
    while (status := client.status(sid)) not in TERMINAL:
        sleep(poll_s)
    return status


def submit_pipeline(
    pipe: Pipeline,
    client: ClusterClient,
    *,
    console: Console,
    quiet: bool = False,
    working_dir: Path = REPO_ROOT,
    poll_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[StageOutcome]:
    """Submit the stages one after another, follow each to its end, retry failures with backoff.

    With ``tracking.mlflow`` set, each stage that ran is logged to MLflow once its job has ended
    (see the module docstring).

    Raises:
        TrackingError: tracking is set but cannot work (MLflow missing, store unusable, a URI run
            root); raised before any job is submitted.
        StageFailed: a stage failed on its last attempt.
        StageStopped: a stage's job was stopped.
    """
    env = runtime_env(pipe, working_dir)
    tracker = _open_tracker(pipe)
    if pipe.is_local:
        record_pipeline(pipe.layout, file=str(pipe.path), mode="submit", address=client.address,
                        stages=[s.name for s in pipe.stages], started=time.time())
    outcomes = []
    ran: str | None = None
    ended = "FAILED"
    try:
        for stage in pipe.stages:
            if can_skip(pipe, stage, ran):
                console.print(f"{stage.name:<10} [green]skipped[/] (done earlier)")
                outcomes.append(StageOutcome(stage.name, "skipped"))
                continue
            try:
                outcomes.append(_submit_stage(pipe, stage, client, env, console, quiet, poll_s, sleep))
            except StageFailed as exc:
                _track(tracker, console, pipe, stage, status="FAILED", error=exc.error)
                raise
            except StageStopped as exc:
                ended = "KILLED"
                _track(tracker, console, pipe, stage, status="KILLED", error=str(exc))
                raise
            except KeyboardInterrupt:
                ended = "KILLED"
                raise
            _track(tracker, console, pipe, stage, status="FINISHED", seconds=outcomes[-1].seconds)
            ran = ran or stage.name
        ended = "FINISHED"
    finally:
        end_tracking(tracker, ended, console.print)
    return outcomes


def check_tracking(pipe: Pipeline) -> None:
    """Refuse ``tracking`` with a URI run root: this client reads the stages' files to log them."""
    if pipe.config.tracking is not None and pipe.config.tracking.mlflow is not None and not pipe.is_local:
        raise TrackingError(f"tracking.mlflow with `ue submit` needs a run root this machine can read (a path "
                            f"on a shared or local disk); root {pipe.root!r} is a URI, so the stages' metrics "
                            "could not be read here. Use a path root, or drop tracking for this submission.")


def _open_tracker(pipe: Pipeline) -> MlflowTracker | None:
    check_tracking(pipe)
    return open_tracker(pipe)


def _track(tracker: MlflowTracker | None, console: Console, pipe: Pipeline, stage: PlannedStage, *, status: str,
           seconds: float = 0.0, error: str | None = None) -> None:
    """Log a stage whose job ended, saying so when its files are not readable here; a tracking
    failure is shown, never fails the pipeline."""
    if tracker is None:
        return
    try:
        unseen = status == "FINISHED" and Manifest(pipe.layout).stage(stage.name) is None  # a good job wrote one
    except (OSError, ValueError):  # unreadable or torn here: the same as not there
        unseen = True
    if unseen:
        console.print(f"{stage.name:<10} [yellow]tracking: no entry for it in {escape(str(pipe.layout.manifest))}"
                      ", so the run directory is not readable here (the cluster's own disk?); logging its config "
                      "and status only[/]")
    track_stage(tracker, pipe, stage, lambda text: console.print(f"{stage.name:<10} {text}"), status=status,
                seconds=seconds, error=error)


def _submit_stage(
    pipe: Pipeline, stage: PlannedStage, client: ClusterClient, env: dict[str, Any], console: Console,
    quiet: bool, poll_s: float, sleep: Callable[[float], None],
) -> StageOutcome:
    earlier = _attempts(client, pipe.run_id, stage.name)
    live = [n for n, job in earlier.items() if str(job.status) not in TERMINAL]
    attempt = max(live) if live else max(earlier, default=0) + 1
    failures = 0
    while True:
        sid = submission_id(pipe.run_id, stage.name, attempt)
        started = time.monotonic()
        if attempt in live:
            console.print(f"{stage.name:<10} following [bold]{sid}[/], already on the cluster")
        else:
            metadata = {META_RUN: pipe.run_id, META_STAGE: stage.name, META_ATTEMPT: str(attempt),
                        "ueray_pipeline": pipe.path.name}
            client.submit(sid, stage_entrypoint(stage), env, metadata, stage.spec.resources.as_submit_kwargs())
            console.print(f"{stage.name:<10} submitted [bold]{sid}[/]")
        _follow(pipe, client, sid, console, quiet)
        status = _wait(client, sid, poll_s, sleep)
        seconds = time.monotonic() - started
        if status == "SUCCEEDED":
            console.print(f"{stage.name:<10} [green]done[/] in {seconds:.1f}s ({sid})")
            return StageOutcome(stage.name, "done", seconds, attempt)
        if status == "STOPPED":
            raise StageStopped(f"stage {stage.name} was stopped ({sid}); rerun `ue submit` to carry on")
        failures += 1
        log = pipe.layout.run_dir / "logs" / f"{sid}.log"
        if failures > stage.retries:
            console.print(f"{stage.name:<10} [red]failed[/] ({sid})")
            raise StageFailed(stage.name, failures, log, f"job {sid} {status}")
        wait = pipe.config.backoff(failures)
        console.print(f"{stage.name:<10} [yellow]{sid} {status}[/]; retrying in {wait:g}s")
        sleep(wait)
        attempt += 1


def _follow(pipe: Pipeline, client: ClusterClient, sid: str, console: Console, quiet: bool) -> None:
    """Stream the job's log to the terminal (unless quiet) and to ``<run>/logs/<sid>.log`` when local.

    The stream always starts at the job's first line, so the local copy is rewritten, not appended.
    """
    path = pipe.layout.run_dir / "logs" / f"{sid}.log" if pipe.is_local else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") if path is not None else nullcontext() as sink:

        def write(chunk: str) -> None:
            if sink is not None:
                sink.write(chunk)
                sink.flush()
            if not quiet:
                for line in chunk.splitlines():
                    console.print(f"[dim]{escape(sid)} |[/] {escape(line)}", highlight=False)

        try:
            client.follow(sid, write)
        except (AuthProblem, ClusterUnreachable):
            raise
        except Exception as exc:  # the log stream is best effort: the job's status decides the outcome
            console.print(f"[yellow]log stream of {escape(sid)} ended early ({escape(type(exc).__name__)}); "
                          "waiting for the job to finish[/]")
