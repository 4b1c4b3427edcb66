"""A watchdog that ends what an embedded run's Ray left behind when the driver itself is killed.

Ray started in-process shuts its node down with the driver, except processes it does not tie to the
driver's life: after a SIGKILL of ``ue run``, ``ray::DashboardAgent``, ``ray::RuntimeEnvAgent`` and
a log monitor kept running. A killed process runs no cleanup of its own, so a separate process
watches it: ``python -m cluster.reaper <pid>`` (started by :func:`start_reaper`, in its own session
so a Ctrl-C or a kill of the driver's group spares it) remembers the driver's descendants every
``POLL_S`` and, once the driver is gone, terminates those still alive (SIGKILL after ``GRACE_S``).
Processes that existed before the reaper started are never touched; a driver that stops Ray itself
stops its reaper first (:func:`stop_reaper`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 5.0


def start_reaper(pid: int) -> subprocess.Popen:
    """Watch ``pid`` (normally this process) from a new session; returns the watchdog process."""
    return subprocess.Popen([sys.executable, "-m", "cluster.reaper", str(pid)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_reaper(reaper: subprocess.Popen) -> None:
    """The driver cleaned up itself: end the watchdog without it touching anything."""
    reaper.terminate()
    try:
        reaper.wait(timeout=10)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def _descendants(driver: psutil.Process) -> list[psutil.Process]:
    try:
        return driver.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch(pid: int, *, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> list[int]:
    """Wait until ``pid`` is gone, then end the descendants it had that are still running; returns
    their process ids. ``psutil`` checks creation times, so a recycled pid is never signalled."""
    try:
        driver = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    me = psutil.Process()
    before = {p.pid for p in _descendants(driver)}
    known: dict[int, psutil.Process] = {}
    while _alive(driver):
        for proc in _descendants(driver):
            if proc.pid not in before and proc.pid != me.pid:
                known.setdefault(proc.pid, proc)
        time.sleep(poll_s)
    left = [p for p in known.values() if _alive(p)]
    for proc in list(left):
        try:
            left += [c for c in proc.children(recursive=True) if c.pid not in known]
        except psutil.NoSuchProcess:
            continue
    for proc in left:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    kill_after(left, grace_s=grace_s)
    return [p.pid for p in left]


def kill_after(procs: list[psutil.Process], *, grace_s: float) -> None:
    """Give ``procs`` (already asked to stop) ``grace_s`` to exit, then SIGKILL the ones still running."""
    _, stubborn = psutil.wait_procs(procs, timeout=grace_s)
    for proc in stubborn:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(stubborn, timeout=5)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    watch(int(sys.argv[1]))


if __name__ == "__main__":
    main()
