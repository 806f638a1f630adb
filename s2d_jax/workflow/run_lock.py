"""An exclusive lock on a run directory: two runs on one workdir would interleave checkpoints,
metrics and exports, and each would resume from the other's half-written state.

    with run_lock.hold(workdir):     # raises RunLockedError naming the holder if another run has it
        ...

The lock is the file `workdir/RUN_LOCK` holding the holder's host and pid, created atomically
(a hard link of a complete file, so no reader sees it half-written). A lock whose pid is no
longer alive on this host is stale (a killed run): it is taken over with a warning, one
takeover at a time (`workdir/.RUN_LOCK.takeover`). A lock held on another host cannot be
checked from here and is always respected.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

LOCK_NAME = "RUN_LOCK"
_log = logging.getLogger(__name__)
_held: set[Path] = set()  # locks this process holds: a lock naming our own pid but not in here
# is a stale one from an earlier process that had the same pid (a restarted container)


class RunLockedError(RuntimeError):
    """Another live run holds the run directory."""


@contextlib.contextmanager
def hold(workdir: Path, enabled: bool = True):
    """Hold the lock on `workdir` for the block (`enabled=False`: do nothing, for processes
    other than process 0 of a multi-process run, which holds it for all of them)."""
    if not enabled:
        yield
        return
    path = acquire(Path(workdir))
    try:
        yield
    finally:
        release(path)


def acquire(workdir: Path) -> Path:
    """Create the lock file, taking over a stale one; returns its path."""
    path = workdir / LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    while not _create(path, me):
        with _takeover_guard(path):
            holder = _read(path)
            if holder is None and not path.exists():
                continue  # released between our attempt and the read
            if holder is not None and not _is_stale(holder, path):
                raise RunLockedError(
                    f"{workdir} is in use by another run (host {holder['host']}, pid "
                    f"{holder['pid']}, see {path}); wait for it to finish, or use another "
                    f"--workdir. If that run is gone, remove {path}."
                )
            _log.warning(
                "%s: taking over the stale lock %s (%s)", workdir, path, holder or "unreadable"
            )
            path.unlink()
    _held.add(path)
    return path


@contextlib.contextmanager
def _takeover_guard(path: Path):
    """Serialise stale-lock takeovers: two runs that both found the same stale lock must not
    both remove it (the second would remove the first one's new lock). flock is released by
    the kernel when its holder dies, so this guard itself never goes stale."""
    with open(path.with_name(f".{path.name}.takeover"), "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def release(path: Path) -> None:
    """Remove the lock if this process still holds it."""
    _held.discard(path)
    if _read(path) == {"host": socket.gethostname(), "pid": os.getpid()}:
        path.unlink()


def _create(path: Path, holder: dict) -> bool:
    """Atomically create `path` with `holder` in it; False when it exists."""
    tmp = path.with_name(f".{path.name}.{holder['pid']}.tmp")
    tmp.write_text(json.dumps(holder))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _read(path: Path) -> dict | None:
    """The holder named in the lock file; None when it is gone or unreadable."""
    try:
        holder = json.loads(path.read_text())
        return {"host": str(holder["host"]), "pid": int(holder["pid"])}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _is_stale(holder: dict, path: Path) -> bool:
    if holder["host"] != socket.gethostname():
        return False
    if holder["pid"] == os.getpid():
        return path not in _held
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False
