"""Run-directory layout and atomic writes.

``RunLayout`` is the only code that knows where a stage puts its outputs (DESIGN.md, "Run
directory"). Every write goes to a temporary name beside the target and is renamed into place, so a
crash never leaves a half-written file under the final name and a rerun can trust what it finds.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RunLocked(RuntimeError):
    """Another process is writing to this run directory; the message says who and since when."""


_HELD: dict[str, list[int]] = {}
"""Lock files this process holds: path -> [fd, depth], so a stage inside ``ue run`` re-enters its lock."""


@contextmanager
def run_lock(run_dir: str | os.PathLike, *, holder: str) -> Iterator[None]:
    """Hold the exclusive lock of a run directory (``<run_dir>/.lock``, ``flock``) for the block.

    One writer per run: a second process gets :class:`RunLocked` naming the holder (``holder``, pid,
    host, start time). The kernel drops the lock when its process dies, so a crashed holder never
    leaves a run stuck. Re-entrant within one process. Run roots that are URIs are not locked.
    """
    if "://" in str(run_dir):
        yield
        return
    path = os.path.abspath(os.path.join(run_dir, ".lock"))
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield
        finally:
            _HELD[path][1] -= 1
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip() or "(a process that is starting)"
        os.close(fd)
        raise RunLocked(f"{run_dir} is in use: {who}. One job at a time writes a run; wait for that one to end, "
                        "stop it, or use another run id (a crashed holder releases the lock by itself)") from None
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder} (pid {os.getpid()} on {socket.gethostname()}, since {since})\n".encode(), 0)
    _HELD[path] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[path]
        os.close(fd)  # releases the flock


def make_private(path: str | os.PathLike) -> int | None:
    """Make ``path`` readable by its owner only (mode 0600) if group or others may read it.

    Returns the mode it had when it was tightened, None when it was already private or is missing.
    """
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return None
    if not mode & 0o077:
        return None
    os.chmod(path, 0o600)
    return mode


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a corrupt file raises ValueError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it into place on success.

    On an exception the temporary directory is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


class RunLayout:
    """Paths of one run directory ``<root>/<run_id>/`` (DESIGN.md, "Run directory")."""

    def __init__(self, root: str | os.PathLike, run_id: str) -> None:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise ValueError(f"run_id {run_id!r} must be a plain, non-hidden directory name")
        self.run_dir = Path(root) / run_id
        self.run_id = run_id

    @property
    def manifest(self) -> Path:
        return self.run_dir / "manifest.json"

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    @property
    def finetune_dir(self) -> Path:
        return self.run_dir / "finetune"

    @property
    def adapter_dir(self) -> Path:
        return self.finetune_dir / "adapter"

    @property
    def features_dir(self) -> Path:
        return self.run_dir / "features"

    def features_split_dir(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        return self.features_dir / f"split={split}"

    @property
    def features_meta(self) -> Path:
        return self.features_dir / "features.json"

    def head_dir(self, name: str) -> Path:
        return self.run_dir / "heads" / name

    def tune_dir(self, name: str) -> Path:
        return self.run_dir / "tune" / name

    @property
    def scores_dir(self) -> Path:
        return self.run_dir / "scores"

    @property
    def quarantine_dir(self) -> Path:
        return self.scores_dir / "quarantine"

    @property
    def report_dir(self) -> Path:
        return self.run_dir / "report"


class Manifest:
    """``manifest.json`` of a run: per stage its status, config hash, timings and outputs.

    A stage is ``done`` only after its outputs are complete, so a rerun skips exactly the stages
    whose outputs can be trusted. Only the process running a stage writes its entry.
    """

    def __init__(self, layout: RunLayout) -> None:
        self.layout = layout

    def read(self) -> dict[str, Any]:
        if not self.layout.manifest.exists():
            return {"run_id": self.layout.run_id, "stages": {}}
        return read_json(self.layout.manifest)

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.read()["stages"].get(name)

    def is_done(self, name: str, config_hash: str | None = None) -> bool:
        entry = self.stage(name)
        if entry is None or entry.get("status") != "done":
            return False
        return config_hash is None or entry.get("config_hash") == config_hash

    def update(self, name: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the stage's entry; a field given as None is removed."""
        doc = self.read()
        merged = {**doc["stages"].get(name, {}), **fields}
        entry = {k: v for k, v in merged.items() if v is not None}
        doc["stages"][name] = entry
        doc.setdefault("versions", _versions())
        atomic_write_json(self.layout.manifest, doc)
        return entry


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ueray", "torch", "transformers", "peft", "ray", "deepspeed"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out
