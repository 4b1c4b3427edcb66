"""A real Ray head node on 127.0.0.1 for trying the Jobs path on one machine (``ue cluster start-local``).

The head runs as ``ray start --head --block`` in its own session, so it can be stopped by its own
process id: ``ray stop`` would stop every Ray on the machine, including other users' clusters.
Its address, process id and ports go to a state file (``$UE_STATE_DIR``, default ``~/.ueray``) so
``stop-local`` and the other commands find it. Token auth is on unless asked otherwise; the token is
``~/.ray/auth_token`` (created if missing) or ``$RAY_AUTH_TOKEN`` and never leaves those places.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.auth import Token, ensure_local_token
from cluster.reaper import kill_after
from jobs._common import loopback_only
from ue.artifacts import atomic_write_json

STATE_ENV = "UE_STATE_DIR"
HOST = "127.0.0.1"
_PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
               "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
               "--node-manager-port", "--object-manager-port")


class LocalHeadError(RuntimeError):
    """Starting or stopping the local head failed; the message says why and what to do."""


class NoCluster(RuntimeError):
    """No cluster address was given or found."""


@dataclass(frozen=True)
class LocalHead:
    """What ``start-local`` recorded: enough to reach and to stop the head."""

    pid: int
    address: str
    gcs_address: str
    temp_dir: str
    log: str
    auth: bool
    num_cpus: int
    started: float


def state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".ueray").expanduser()


def state_file() -> Path:
    return state_dir() / "local-head.json"


def read_state() -> LocalHead | None:
    """The recorded local head, or None when none is recorded."""
    try:
        return LocalHead(**json.loads(state_file().read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _is_our_head(pid: int) -> bool:
    """Whether ``pid`` still is the ``ray start --head`` we launched (not a recycled id)."""
    import psutil

    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "start" in cmdline and "--head" in cmdline and "--block" in cmdline


def running_head() -> LocalHead | None:
    head = read_state()
    return head if head is not None and _is_our_head(head.pid) else None


def resolve_address(explicit: str | None) -> str:
    """The Jobs API address to use: ``--address``, else ``$RAY_API_SERVER_ADDRESS``, else an http(s)
    ``$RAY_ADDRESS``, else the running local head.

    Raises:
        NoCluster: saying how to name or start one.
    """
    candidates = [explicit, os.environ.get("RAY_API_SERVER_ADDRESS")]
    ray_address = os.environ.get("RAY_ADDRESS", "")
    candidates.append(ray_address if ray_address.startswith(("http://", "https://")) else None)
    for address in candidates:
        if address:
            return address if "://" in address else f"http://{address}"
    head = running_head()
    if head is not None:
        return head.address
    raise NoCluster("no Ray cluster to talk to: pass --address http://HEAD:8265, set RAY_API_SERVER_ADDRESS, "
                    "or start one here with `ue cluster start-local`")


def _free_ports(count: int) -> list[int]:
    """Ports free right now; held open together so they are distinct."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise LocalHeadError("cannot find the `ray` command; install ray[default] in this environment")
    return found


def _answers(url: str, token: Token | None) -> bool:
    request = urllib.request.Request(url, headers=token.headers() if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _ready(address: str, agent_port: int, token: Token | None) -> bool:
    """Whether jobs can be submitted: the Jobs API answers on the head, and so does the node's
    dashboard agent, which runs the jobs (it starts later; submitting before it is up fails)."""
    return _answers(f"{address}/api/jobs/", token) and _answers(f"http://{HOST}:{agent_port}/api/healthz", token)


def start_local(
    *,
    num_cpus: int = 2,
    port: int | None = None,
    dashboard_port: int | None = None,
    temp_dir: str | None = None,
    object_store_mb: int | None = None,
    auth: bool = True,
    timeout_s: float = 120.0,
) -> LocalHead:
    """Start a head node on 127.0.0.1 and wait until its Jobs API answers.

    Raises:
        LocalHeadError: a head is already recorded and running, or the new one did not come up
            (the message ends with the tail of its log).
    """
    current = running_head()
    if current is not None:
        raise LocalHeadError(f"a local head is already running at {current.address} (pid {current.pid}); "
                             "stop it with `ue cluster stop-local`")
    token = ensure_local_token() if auth else None
    ports = _free_ports(len(_PORT_FLAGS))
    ports[0], ports[1] = port or ports[0], dashboard_port or ports[1]
    # Ray's default /tmp/ray would make every `ray.init()` on this machine join this head.
    temp = Path(temp_dir or f"/tmp/ueray-{os.getuid()}").expanduser()
    temp.mkdir(parents=True, exist_ok=True)
    state_dir().mkdir(parents=True, exist_ok=True)
    log = state_dir() / "local-head.log"
    cmd = [_ray_executable(), "start", "--head", "--block", "--node-ip-address", HOST, "--dashboard-host", HOST,
           "--include-dashboard", "true", "--num-cpus", str(num_cpus), "--num-gpus", "0",
           "--temp-dir", str(temp), "--disable-usage-stats"]
    for flag, value in zip(_PORT_FLAGS, ports, strict=True):
        cmd += [flag, str(value)]
    if object_store_mb:
        cmd += ["--object-store-memory", str(object_store_mb * 2**20)]
    env = {**os.environ, "RAY_AUTH_MODE": "token" if auth else "disabled", "PYTHONUNBUFFERED": "1"}
    loopback_only(env)  # `ray start` would turn --node-ip-address 127.0.0.1 into the machine's address
    # Job entrypoints say `python`: make that this environment's interpreter, which has the project.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    head = LocalHead(proc.pid, f"http://{HOST}:{ports[1]}", f"{HOST}:{ports[0]}", str(temp), str(log), auth,
                     num_cpus, time.time())
    atomic_write_json(state_file(), asdict(head))
    deadline = time.monotonic() + timeout_s
    agent_port = ports[_PORT_FLAGS.index("--dashboard-agent-listen-port")]
    while not _ready(head.address, agent_port, token):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            stop_local()
            raise LocalHeadError(f"the local head did not come up (see {log}):\n{tail}")
        time.sleep(0.5)
    return head


def stop_local(timeout_s: float = 30.0) -> LocalHead | None:
    """Stop the recorded head and every process it started; None if none was recorded.

    ``ray start --block`` shuts its node down on SIGTERM; whatever it leaves (job drivers, workers)
    is collected beforehand by parentage and terminated by process id.
    """
    import psutil

    head = read_state()
    if head is None:
        return None
    if _is_our_head(head.pid):
        root = psutil.Process(head.pid)
        family = [root, *root.children(recursive=True)]
        root.terminate()
        kill_after(family, grace_s=timeout_s)
    state_file().unlink(missing_ok=True)
    return head
