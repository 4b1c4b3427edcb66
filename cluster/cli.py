"""``ue``: run a pipeline here (``run``) or on a Ray cluster (``submit``), and look after it.

Imports stay light at module level (typer and the standard library) so ``ue --help`` and
``ue status`` start fast; pydantic, Ray and torch are imported inside the commands that need them.
Exit codes: 0 ok, 1 a stage failed or was stopped, 2 bad config or usage, 3 auth token problem,
4 no cluster reachable, 130 interrupted.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from cluster.pipeline import Pipeline, PipelineError
    from cluster.submit import ClusterClient

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Uncertainty estimation pipelines on Ray: run, submit, watch, report.")
cluster_app = typer.Typer(no_args_is_help=True, help="A real Ray head node on 127.0.0.1 for trying `ue submit`.")
app.add_typer(cluster_app, name="cluster")

PipelineArg = Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. jobs/configs/pipelines/demo.yaml.")]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="key=value for the pipeline (run_id=x) or <stage>.key.sub=value for one stage."),
]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Jobs API, e.g. http://HEAD:8265 (default: env or local head).")
]
RootOpt = Annotated[Path, typer.Option("--root", help="Folder holding the runs.")]
SID = re.compile(r"^(?P<run>.+)-(?P<stage>[a-z0-9_]+)-(?P<attempt>\d+)$")


def _out() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _fail(message: str, code: int) -> NoReturn:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def _load(pipeline: Path, overrides: list[str] | None, *, check_files: bool = True) -> Pipeline:
    from cluster.pipeline import PipelineError, load_pipeline

    try:
        return load_pipeline(pipeline, overrides or [], check_files=check_files)
    except PipelineError as exc:
        _print_problems(exc)
        raise typer.Exit(2) from None


def _print_problems(exc: PipelineError) -> None:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"[red]{len(exc.problems)} problem(s)[/] in the pipeline:")
    for problem in exc.problems:
        err.print(f"  [bold]{escape(problem.where)}[/] {escape(str(problem.issue))}")


def _client(address: str | None, verbose: bool = False) -> ClusterClient:
    """A Jobs client for ``address`` (or the one found), exiting with a clear message on trouble."""
    import logging

    from cluster.auth import AuthProblem, find_token
    from cluster.local import NoCluster, resolve_address
    from cluster.submit import ClusterClient, ClusterUnreachable

    try:
        client = ClusterClient(resolve_address(address), find_token())
    except AuthProblem as exc:
        _fail(str(exc), 3)
    except (NoCluster, ClusterUnreachable) as exc:
        _fail(str(exc), 4)
    # Ray logs every packaging step of the upload at INFO; the job logs are what matters here.
    logging.getLogger("ray").setLevel(logging.INFO if verbose else logging.ERROR)
    return client


def _report_hint(pipe: Pipeline) -> str:
    html = pipe.layout.report_dir / "report.html"
    return f"report: {html}" if any(s.name == "report" for s in pipe.stages) else f"run dir: {pipe.layout.run_dir}"


@app.command()
def run(
    pipeline: PipelineArg,
    overrides: OverridesArg = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show stage and Ray output.")] = False,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for the in-process Ray.")] = None,
) -> None:
    """Run a pipeline on this machine, stages in-process; done stages are skipped, failures retried."""
    import os

    from cluster.runner import StageFailed, log_tail, run_embedded
    from cluster.tracking import TrackingError
    from ue.artifacts import RunLocked

    pipe = _load(pipeline, overrides)
    if verbose:
        os.environ.setdefault("UE_RAY_LOGS", "1")
    out = _out()
    out.print(f"run [bold]{pipe.run_id}[/] in {pipe.layout.run_dir}")
    try:
        run_embedded(pipe, verbose=verbose, num_cpus=num_cpus)
    except RunLocked as exc:
        _fail(str(exc), 1)
    except TrackingError as exc:
        _fail(str(exc), 2)
    except StageFailed as exc:
        out.print(log_tail(exc.log), markup=False)
        _fail(f"{exc}\nfull log: {exc.log}\nrerun the same command to carry on from this stage", 1)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to carry on", 130)
    out.print(f"[green]all stages done[/]; {_report_hint(pipe)}")


@app.command()
def submit(
    pipeline: PipelineArg,
    overrides: OverridesArg = None,
    address: AddressOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Stage lines only, no job logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also Ray's own client logs.")] = False,
) -> None:
    """Submit each stage as a Ray Job (<run_id>-<stage>-<attempt>), follow it, retry failures."""
    from cluster.auth import AuthProblem
    from cluster.runner import StageFailed
    from cluster.submit import ClusterUnreachable, StageStopped, check_tracking, submit_pipeline
    from cluster.tracking import TrackingError

    pipe = _load(pipeline, overrides, check_files=False)
    try:
        check_tracking(pipe)  # before connecting: nothing to ask the cluster if this cannot be tracked
    except TrackingError as exc:
        _fail(str(exc), 2)
    client = _client(address, verbose)
    out = _out()
    out.print(f"run [bold]{pipe.run_id}[/] on {client.address}")
    try:
        submit_pipeline(pipe, client, console=out, quiet=quiet)
    except TrackingError as exc:
        _fail(str(exc), 2)
    except AuthProblem as exc:
        _fail(str(exc), 3)
    except ClusterUnreachable as exc:
        _fail(str(exc), 4)
    except (StageFailed, StageStopped) as exc:
        _fail(f"{exc}\nlogs: `ue logs {pipe.run_id}`", 1)
    except RuntimeError as exc:  # the Jobs API refused a request (bad runtime_env, a job id in use, ...)
        _fail(f"the cluster at {client.address} refused a request: {exc}", 1)
    except KeyboardInterrupt:
        _fail(f"interrupted; the current job keeps running: `ue status {pipe.run_id} --address {client.address}`, "
              f"`ue stop {pipe.run_id}`", 130)
    out.print(f"[green]all stages done[/]; {_report_hint(pipe)}")


@app.command()
def validate(pipeline: PipelineArg, overrides: OverridesArg = None) -> None:
    """Check a pipeline and every stage config in it; lists every problem with its stage and key."""
    pipe = _load(pipeline, overrides)
    _out().print(f"[green]ok[/]: {len(pipe.stages)} stage(s) ({', '.join(s.name for s in pipe.stages)}), "
                 f"run {pipe.run_id} in {pipe.layout.run_dir}")


@app.command()
def status(
    run_id: Annotated[str | None, typer.Argument(help="Run id; leave out to list the runs under --root.")] = None,
    root: RootOpt = Path("runs"),
    address: Annotated[str | None, typer.Option(help="Also list the run's jobs on this cluster.")] = None,
    jobs: Annotated[bool, typer.Option("--jobs", help="Also list the run's jobs on the cluster found.")] = False,
) -> None:
    """Stages of a run from its manifest (and its Ray Jobs with --jobs/--address)."""
    from cluster.views import read_manifest, runs_table, stages_table

    out = _out()
    if run_id is None:
        out.print(runs_table(root))
        return
    manifest = read_manifest(root / run_id)
    if manifest is not None:
        out.print(stages_table(manifest))
    elif not (address or jobs):
        _fail(f"no run {run_id!r} under {root.resolve()} (pass --root, or --jobs for a run on a cluster)", 2)
    if address or jobs:
        from cluster.views import jobs_table

        out.print(jobs_table(_client(address).jobs(run_id), f"jobs of run {run_id}"))


def _latest_job(client: ClusterClient, target: str, stage: str | None) -> str | None:
    jobs = [j for j in client.jobs(target) if stage is None or (j.metadata or {}).get("ueray_stage") == stage]
    return jobs[-1].submission_id if jobs else None


@app.command()
def logs(
    target: Annotated[str, typer.Argument(help="Submission id (<run_id>-<stage>-<attempt>) or run id.")],
    stage: Annotated[str | None, typer.Option(help="With a run id: this stage's latest attempt.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    address: AddressOpt = None,
    root: RootOpt = Path("runs"),
    local: Annotated[bool, typer.Option("--local", help="Read <root>/<run>/logs/ (embedded runs).")] = False,
) -> None:
    """A stage's log: from the cluster's Jobs API, or from the run directory (--local, or no cluster)."""
    from cluster.local import NoCluster, resolve_address

    try:
        resolve_address(address)
    except NoCluster:
        local = True  # nothing to ask: an embedded run's logs are all there is
    if local:
        _local_logs(target, stage, root)
        return
    client = _client(address)
    sid = target if SID.match(target) and _exists(client, target) else _latest_job(client, target, stage)
    if sid is None:
        _fail(f"no job {target!r} on {client.address} (for an embedded run use --local)", 2)
    if follow:
        client.follow(sid, lambda chunk: print(chunk, end="", flush=True))
    else:
        print(client.logs(sid), end="")


def _exists(client: ClusterClient, sid: str) -> bool:
    try:
        client.status(sid)
    except RuntimeError:
        return False
    return True


def _local_logs(target: str, stage: str | None, root: Path) -> None:
    match = SID.match(target)
    if match and (root / match["run"] / "logs" / f"{target}.log").exists():
        path = root / match["run"] / "logs" / f"{target}.log"
    else:
        found = sorted((root / target / "logs").glob(f"{target}-{stage or '*'}-*.log"), key=lambda p: p.stat().st_mtime)
        if not found:
            _fail(f"no logs for {target!r} under {root.resolve()}", 2)
        path = found[-1]
    print(path.read_text(encoding="utf-8", errors="replace"), end="")


@app.command()
def stop(
    target: Annotated[str, typer.Argument(help="Submission id, or a run id to stop all its live jobs.")],
    address: AddressOpt = None,
) -> None:
    """Stop a job (or every unfinished job of a run); `ue submit` treats a stop as final, not as a failure."""
    client = _client(address)
    sids = [target] if SID.match(target) and _exists(client, target) else [
        j.submission_id for j in client.jobs(target) if str(j.status) in ("PENDING", "RUNNING")]
    if not sids:
        _fail(f"nothing to stop for {target!r} on {client.address}", 2)
    for sid in sids:
        stopped = client.stop(sid)
        _out().print(f"{sid}: {'stop requested' if stopped else 'already finished'}")


@app.command(name="list")
def list_jobs(address: AddressOpt = None) -> None:
    """Jobs that ue submitted to the cluster, oldest first."""
    from cluster.views import jobs_table

    client = _client(address)
    _out().print(jobs_table(client.jobs(), f"ueray jobs on {client.address}"))


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="Run id under --root.")],
    overrides: OverridesArg = None,
    root: RootOpt = Path("runs"),
) -> None:
    """(Re)build <run>/report/: report.md, report.html and the plots, from features and saved heads."""
    from cluster.stages import STAGE_IMPLS
    from ue.config import ConfigError, load_config

    impl = STAGE_IMPLS.get("report")
    data = {"run": {"root": str(root.resolve()), "run_id": run_id, "force": True}}
    try:
        cfg = load_config(impl.config_class(), data=data, overrides=overrides or [])
    except ConfigError as exc:
        _fail(str(exc), 2)
    outputs = impl.run_function()(cfg)
    _out().print(f"report: {outputs.get('html', root / run_id / 'report' / 'report.html')}")


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="The run directory, <root>/<run_id>.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key.sub=value of the serve config, e.g. heads=[alien,msp] accept.head=alien.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A serve stage YAML (jobs.schemas.serve).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8000).")] = None,
    replicas: Annotated[int | None, typer.Option(help="Model replicas (default: one per GPU, else 1).")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for the in-process Ray.")] = None,
) -> None:
    """Serve a run's model and heads over HTTP (Ray Serve): POST {"texts": [...]} -> {"rows": [...]}."""
    import logging
    import os

    from cluster.stages import STAGE_IMPLS
    from ue.config import ConfigError, load_config, merge, parse_overrides

    run_dir = run_dir.expanduser().resolve()
    if not run_dir.is_dir():
        _fail(f"{run_dir} is not a run directory", 2)
    given = {"http": {k: v for k, v in (("host", host), ("port", port)) if v is not None}}
    if replicas is not None:
        given["replicas"] = {"num_replicas": replicas}
    where = {"run": {"root": str(run_dir.parent), "run_id": run_dir.name}}
    tree = merge(parse_overrides(overrides or []), {**given, **where})
    impl = STAGE_IMPLS.get("serve")
    try:
        cfg = load_config(impl.config_class(), config, overrides=tree)
    except ConfigError as exc:
        _fail(str(exc), 2)
    logging.basicConfig(level=os.environ.get("UE_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
    from jobs._common import init_ray

    started = init_ray(num_cpus)
    try:
        impl.run_function()(cfg)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc), 2)
    except RuntimeError as exc:  # a replica failed to start: its traceback is in Ray's serve logs
        _fail(f"{exc}\nthe replica's error is in Ray's logs (logs/serve/ under the Ray session folder)", 1)
    finally:
        if started:
            import ray

            ray.shutdown()


@cluster_app.command("start-local")
def start_local(
    num_cpus: Annotated[int, typer.Option(help="CPUs the head offers to jobs.")] = 2,
    port: Annotated[int | None, typer.Option(help="GCS port (default: a free one).")] = None,
    dashboard_port: Annotated[int | None, typer.Option(help="Dashboard / Jobs API port (default: free).")] = None,
    temp_dir: Annotated[str | None, typer.Option(help="Ray's temp dir (keep it short: sockets live there).")] = None,
    object_store_mb: Annotated[int | None, typer.Option(help="Object store size in MiB.")] = None,
    auth: Annotated[bool, typer.Option("--auth/--no-auth", help="Token auth on the Jobs API.")] = True,
) -> None:
    """Start a Ray head on 127.0.0.1 (token auth on) and remember its address for the other commands."""
    from cluster.auth import AuthProblem
    from cluster.local import LocalHeadError
    from cluster.local import start_local as start

    t0 = time.monotonic()
    try:
        head = start(num_cpus=num_cpus, port=port, dashboard_port=dashboard_port, temp_dir=temp_dir,
                     object_store_mb=object_store_mb, auth=auth)
    except AuthProblem as exc:
        _fail(str(exc), 3)
    except LocalHeadError as exc:
        _fail(str(exc), 1)
    note = "token auth on (token: ~/.ray/auth_token or $RAY_AUTH_TOKEN)" if head.auth else "no auth"
    _out().print(f"local head at [bold]{head.address}[/] (pid {head.pid}, {note}) "
                 f"in {time.monotonic() - t0:.0f}s; stop it with `ue cluster stop-local`")


@cluster_app.command("stop-local")
def stop_local() -> None:
    """Stop the head started by `ue cluster start-local` (only that one, by its process id)."""
    from cluster.local import stop_local as stop

    head = stop()
    _out().print(f"stopped the local head at {head.address}" if head else "no local head recorded")


if __name__ == "__main__":
    app(prog_name="ue")
