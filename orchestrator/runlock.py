"""One driver per run folder: ``RUN_DIR/driver.lock``.

A driver (``mpo sweep``, new or ``--resume``) holds an exclusive ``flock`` on the lock file for
as long as it runs, and writes its holder record into it (host, pid, when it started, the
command). The kernel drops the lock when the holder exits, however it exits (SIGKILL
included; on NFSv4 the server drops it when the holder's lease expires), so the lock never
outlives its driver:

- a second driver finds the lock held and is refused with the holder's record
  (``RunFolderError``);
- a driver that finds the file but not the lock takes it over and says whose it was
  (``RunLock.previous``): that driver is gone.

A filesystem that ignores ``flock`` must not let two drivers in: if the lock was granted but
the record names a live process of this host (same pid and start time), the driver is refused
all the same. A filesystem that refuses locks altogether is refused with the reason. No Ray.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.errors import MpoError
from jobs.io import pid_alive
from jobs.run_folder import LOCK_FILE, RunFolderError

#: how long a driver retries a held lock before refusing (``mpo status`` may hold it briefly)
RETRY_SECONDS = 2.0


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), None elsewhere: it
    tells a live holder from an unrelated process that got the same pid later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def holder_record(command: str) -> dict[str, Any]:
    """What this process writes into the lock it holds."""
    pid = os.getpid()
    return {"host": platform.node(), "pid": pid, "proc_start": _proc_start(pid),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command}


def describe(holder: dict[str, Any]) -> str:
    """``pid 123 on host h since 2025-01-01T00:00:00+00:00 (mpo sweep ...)``"""
    if not holder:
        return "a driver that left no record"
    text = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since "
            f"{holder.get('started', '?')}")
    return text + (f" ({holder['command']})" if holder.get("command") else "")


def _same_live_process(holder: dict[str, Any]) -> bool:
    """The record names a process of this host that is still running (not this one)."""
    pid = holder.get("pid")
    if holder.get("host") != platform.node() or not isinstance(pid, int) or pid == os.getpid():
        return False
    now = _proc_start(pid)
    if now is not None:  # Linux: /proc says whether it runs, and whether it is the same process
        return holder.get("proc_start") in (None, now)
    return pid_alive(pid)  # elsewhere: whether a process of that pid runs


def read_holder(run_dir: Path) -> dict[str, Any]:
    """The record in ``run_dir``'s lock file ({} when there is none or it cannot be read)."""
    try:
        holder = json.loads((run_dir / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def is_held(run_dir: Path) -> bool:
    """Whether a driver holds ``run_dir``'s lock now (a shared lock taken and dropped at once)."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the shared lock, if taken
    return False


@dataclass
class RunLock:
    """A held lock; ``previous`` is the record of a driver that died holding the folder."""

    path: Path
    fd: int
    previous: dict[str, Any]

    def release(self) -> None:
        """Remove the file, then drop the lock (a driver that opened the old file retries)."""
        if self.fd < 0:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock(fd: int, path: Path) -> bool:
    """True when the exclusive lock was granted, False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return False
        raise MpoError(
            f"cannot lock {path} ({os.strerror(err.errno or 0)}): the run folder's filesystem "
            "does not support file locks (flock), which keep two drivers off one run folder; "
            "use a local disk or NFSv4/EFS for --storage"
        ) from None
    return True


def acquire(run_dir: Path, *, command: str) -> RunLock:
    """Hold ``run_dir``'s lock, or raise ``RunFolderError`` naming the driver that holds it."""
    path = run_dir / LOCK_FILE
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        granted = _flock(fd, path)
        # The holder may have removed the file between our open and our lock: then this lock is
        # on a file nobody else will open, so start over on the current one.
        if granted and _same_file(fd, path):
            break
        os.close(fd)
        if not granted and time.monotonic() > deadline:
            holder = read_holder(run_dir)
            raise RunFolderError(
                f"{run_dir} is in use by another `mpo sweep`: {describe(holder)}. Wait for it "
                "to finish or stop it (Ctrl+C), then `mpo sweep --resume "
                f"{run_dir}`; `mpo status {run_dir}` shows its progress"
            )
        time.sleep(0.1)
    previous = _read_fd(fd)
    if _same_live_process(previous):
        os.close(fd)
        raise RunFolderError(
            f"{run_dir} is in use by another `mpo sweep`: {describe(previous)} is running, yet "
            f"the filesystem granted its lock to this driver too (it does not enforce flock). "
            f"Stop that driver first; if no mpo sweep is running, delete {path}"
        )
    data = json.dumps(holder_record(command), indent=2, sort_keys=True).encode() + b"\n"
    # Written in place, not renamed over: the lock belongs to this open file.
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    return RunLock(path, fd, previous)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_fd(fd: int) -> dict[str, Any]:
    size = os.fstat(fd).st_size
    try:
        record = json.loads(os.pread(fd, size, 0)) if size else {}
    except ValueError:  # a driver killed while writing its record
        return {}
    return record if isinstance(record, dict) else {}
