"""Embedded mode: run a pipeline's stages in this process, in order, with Ray started here.

Each stage is ``jobs.<stage>.run(cfg)`` called in-process. A stage the manifest marks done with the
same config hash is skipped (unless an earlier stage ran again), so killing the driver and rerunning
the same command finishes the run.
A failed stage is retried with exponential backoff. Everything a stage prints (Python logging,
tqdm, C-level output of torch and Ray) goes to ``<run>/logs/<run_id>-<stage>-<attempt>.log``; the
terminal shows one progress line per stage unless ``verbose``.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column

from cluster.auth import default_token_path, keep_private
from cluster.pipeline import Pipeline, PlannedStage, record_pipeline
from cluster.reaper import start_reaper, stop_reaper
from cluster.tracking import end_tracking, open_tracker, track_stage
from ue.artifacts import Manifest, run_lock
from ue.config import stage_hash

TAIL_LINES = 25


class StageFailed(RuntimeError):
    """A stage failed on its last attempt; ``log`` holds its output."""

    def __init__(self, stage: str, attempts: int, log: Path, error: str) -> None:
        self.stage, self.attempts, self.log, self.error = stage, attempts, log, error
        super().__init__(f"stage {stage} failed after {attempts} attempt(s): {error}")


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage: ``done``, ``skipped`` (done earlier) or ``failed``."""

    stage: str
    status: str
    seconds: float = 0.0
    attempts: int = 0


def submission_id(run_id: str, stage: str, attempt: int) -> str:
    """``<run_id>-<stage>-<attempt>``: the Ray Job id in submit mode, the log name in embedded mode."""
    return f"{run_id}-{stage}-{attempt}"


def is_done(pipe: Pipeline, stage: PlannedStage) -> bool:
    """Done with the config it would run with now (the check ``jobs._common.run_stage`` makes)."""
    if not pipe.is_local or stage.cfg.run.force:
        return False
    return Manifest(pipe.layout).is_done(stage.name, stage_hash(stage.cfg))


def can_skip(pipe: Pipeline, stage: PlannedStage, earlier_ran: str | None) -> bool:
    """Whether ``stage`` is done and may be skipped.

    A done stage still runs again when an earlier stage ran in this invocation (``earlier_ran``):
    its inputs may have changed. It is marked ``stale`` in the manifest, so the stage's own
    skip-if-done check (``jobs._common.run_stage``) agrees and redoes it.
    """
    if not is_done(pipe, stage):
        return False
    if earlier_ran is None:
        return True
    Manifest(pipe.layout).update(stage.name, status="stale", stale_because=f"{earlier_ran} ran again")
    return False


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" if it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def _terminal_fd() -> int | None:
    try:
        return sys.stdout.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None  # stdout is not a file (e.g. a test runner's buffer): nothing to redirect


@contextmanager
def _output_to(path: Path | None) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``path`` (append) so C extensions and child processes are
    caught as well as Python's own writes; ``None`` leaves the output alone."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "ab", buffering=0) as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


@contextmanager
def _own_sigint() -> Iterator[None]:
    """Give SIGINT back its handler after a stage: Ray Tune installs its own and leaves it behind, so
    a Ctrl-C during a later stage was ignored and the run ended with rc 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)


@contextmanager
def _sigint_seen() -> Iterator[Callable[[], bool]]:
    """Yield a check of whether a SIGINT arrived, whoever handled it.

    Ray Train and Ray Tune install their own SIGINT handlers that abort gracefully and then end the
    stage with ``SystemExit(1)`` or an "interrupted" error, which looked like a failed attempt to
    retry. Every signal with a Python handler also writes its number to the wakeup fd, so reading
    that pipe tells a Ctrl-C apart from a failure without depending on any library's handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    seen = False

    def check() -> bool:
        nonlocal seen
        try:
            while chunk := os.read(read, 512):
                seen = seen or signal.SIGINT in chunk
        except BlockingIOError:
            pass
        return seen

    try:
        yield check
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)


class _Display:
    """One progress row per stage, plus a printed line for every change (visible in CI logs too)."""

    def __init__(self, console: Console, stages: list[PlannedStage]) -> None:
        self.progress = Progress(
            SpinnerColumn(finished_text=" "),
            TextColumn("{task.description}", table_column=Column(no_wrap=True, min_width=10)),
            TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True)),
            TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)),
            # The log's last line takes whatever width is left and is cut, never wrapped.
            TextColumn("[dim]{task.fields[detail]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
            console=console,
            transient=True,
            # Stage output belongs in the stage's log (fds 1 and 2), not above the progress rows.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.tasks: dict[str, TaskID] = {
            s.name: self.progress.add_task(s.name, total=1, start=False, status="[dim]waiting", detail="")
            for s in stages
        }

    def start(self, stage: str, attempt: int) -> None:
        note = f" (attempt {attempt})" if attempt > 1 else ""
        self.progress.start_task(self.tasks[stage])
        self.progress.update(self.tasks[stage], status=f"[cyan]running{note}")

    def finish(self, stage: str, line: str) -> None:
        self.progress.update(self.tasks[stage], completed=1, status=line)
        self.progress.stop_task(self.tasks[stage])
        self.progress.console.print(f"{stage:<10} {line}", soft_wrap=True)

    @contextmanager
    def tail(self, stage: str, log: Path | None) -> Iterator[None]:
        """While the stage runs, show the last line of its log (e.g. an epoch's loss) beside it."""
        if log is None:
            yield
            return
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(1.0):
                self.progress.update(self.tasks[stage], detail=escape(_last_line(log)[:90]))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()
            self.progress.update(self.tasks[stage], detail="")

    def note(self, stage: str, line: str) -> None:
        self.progress.update(self.tasks[stage], status=line)
        self.progress.console.print(f"{stage:<10} {line}", soft_wrap=True)


def _start_ray(num_cpus: int | None) -> bool:
    """Start Ray in this process (the stages' own ``init_ray`` then finds it running); True if we did.

    ``address="local"`` because a bare ``ray.init()`` joins any head that ``ray start`` left
    recorded under /tmp/ray, and an embedded run must not land on someone else's cluster.
    ``RAY_ADDRESS``, when set, is an explicit wish to use that cluster instead.
    """
    from jobs._common import init_ray, loopback_only

    if os.environ.get("RAY_ADDRESS"):
        return init_ray(num_cpus)
    loopback_only()  # before the first `import ray`, which reads it
    import ray

    if ray.is_initialized():
        return False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             log_to_driver=os.environ.get("UE_RAY_LOGS", "0") == "1")
    keep_private(default_token_path())
    return True


def run_embedded(
    pipe: Pipeline,
    *,
    console: Console | None = None,
    verbose: bool = False,
    num_cpus: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[StageOutcome]:
    """Run every stage of ``pipe`` in this process; returns one outcome per stage.

    Raises:
        StageFailed: for the first stage that fails on its last attempt (later stages do not run).
        RunLocked: another process holds the run directory (nothing is written).
    """
    if not pipe.is_local:
        raise ValueError(f"embedded runs need a local root, not {pipe.root}; use `ue submit` for remote storage")
    logging.basicConfig(level=os.environ.get("UE_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
    capture = not verbose and _terminal_fd() is not None
    if console is None:
        # With output captured, fd 1 points at a log file during stages; draw on a copy of the terminal.
        console = (Console(file=os.fdopen(os.dup(_terminal_fd()), "w", buffering=1), highlight=False) if capture
                   else Console(highlight=False))
    with run_lock(pipe.layout.run_dir, holder=f"ue run {pipe.path}"):
        return _run_all(pipe, console, capture, num_cpus, sleep)


def _run_all(pipe: Pipeline, console: Console, capture: bool, num_cpus: int | None,
             sleep: Callable[[float], None]) -> list[StageOutcome]:
    logs = pipe.layout.run_dir / "logs"
    tracker = open_tracker(pipe)  # before any stage: a missing MLflow fails the run at once
    record_pipeline(pipe.layout, file=str(pipe.path), mode="embedded", stages=[s.name for s in pipe.stages],
                    started=time.time())
    display = _Display(console, pipe.stages)
    outcomes: list[StageOutcome] = []
    ran: str | None = None  # the first stage this invocation ran; every later one runs too
    ray_started = False
    reaper: subprocess.Popen | None = None
    ended = "FAILED"
    try:
        with display.progress:
            for stage in pipe.stages:
                if can_skip(pipe, stage, ran):
                    display.finish(stage.name, "[green]skipped[/] (done earlier)")
                    outcomes.append(StageOutcome(stage.name, "skipped"))
                    continue
                if stage.impl.uses_ray and reaper is None:
                    # Before Ray starts, so it sees every process Ray adds; it acts only if we are killed.
                    reaper = start_reaper(os.getpid())
                    with _output_to(logs / "ray.log" if capture else None):
                        ray_started = _start_ray(num_cpus)
                try:
                    outcomes.append(_run_stage(pipe, stage, display, logs, capture, sleep))
                except StageFailed as exc:
                    track_stage(tracker, pipe, stage, partial(display.note, stage.name), status="FAILED",
                                error=exc.error)
                    raise
                except KeyboardInterrupt:
                    ended = "KILLED"
                    raise
                track_stage(tracker, pipe, stage, partial(display.note, stage.name), status="FINISHED",
                            seconds=outcomes[-1].seconds)
                ran = ran or stage.name
        ended = "FINISHED"
    finally:
        end_tracking(tracker, ended, console.print)
        if ray_started:
            import ray

            with _output_to(logs / "ray.log" if capture else None):
                ray.shutdown()
        if reaper is not None:
            stop_reaper(reaper)
    record_pipeline(pipe.layout, finished=time.time())
    return outcomes


def _run_stage(
    pipe: Pipeline, stage: PlannedStage, display: _Display, logs: Path, capture: bool,
    sleep: Callable[[float], None],
) -> StageOutcome:
    attempt = 0
    while True:
        attempt += 1
        log = logs / f"{submission_id(pipe.run_id, stage.name, attempt)}.log"
        display.start(stage.name, attempt)
        started = time.monotonic()
        try:
            sink = log if capture else None
            with _sigint_seen() as interrupted, _own_sigint(), display.tail(stage.name, sink), _output_to(sink):
                print(f"=== {stage.name} attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
                try:
                    # Imported per attempt: an import error (say, a module mid-edit) is a failed attempt too.
                    stage.impl.run_function()(stage.cfg)
                except BaseException:
                    traceback.print_exc()
                    if interrupted():
                        raise _interrupted(pipe, stage) from None
                    raise
                if interrupted():  # the stage finished its work anyway: stop before the next one
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            display.finish(stage.name, "[yellow]interrupted[/]")
            raise
        except Exception as exc:
            error = escape(f"{type(exc).__name__}: {exc}")
            if attempt > stage.retries:
                display.finish(stage.name, f"[red]failed[/] after {attempt} attempt(s)")
                raise StageFailed(stage.name, attempt, log, error) from exc
            wait = pipe.config.backoff(attempt)
            display.note(stage.name, f"[yellow]attempt {attempt} failed[/] ({error}); retrying in {wait:g}s")
            sleep(wait)
            continue
        seconds = time.monotonic() - started
        display.finish(stage.name, f"[green]done[/] in {seconds:.1f}s")
        return StageOutcome(stage.name, "done", seconds, attempt)


def _interrupted(pipe: Pipeline, stage: PlannedStage) -> KeyboardInterrupt:
    """A Ctrl-C that a library's handler turned into an error: record it as such and stop."""
    manifest = Manifest(pipe.layout)
    if (manifest.stage(stage.name) or {}).get("status") in ("running", "failed"):
        manifest.update(stage.name, status="interrupted", error="interrupted by Ctrl-C; rerun to resume")
    return KeyboardInterrupt()
