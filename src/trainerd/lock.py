"""Single instance: a kernel flock on run/trainerd.lock (DESIGN.md principle 7).

The lock, not a PID file, answers "is a daemon running?": the kernel drops it when the
holder dies however it dies, so a stale file from a dead process never blocks a start.
The pid and start time inside the file are for people.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("trainerd.lock")


class AlreadyRunning(Exception):
    pass


@dataclass
class Holder:
    pid: int | None
    started_at: float | None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at)) if self.started_at else "?"
        return f"pid {self.pid if self.pid is not None else '?'} since {since}"


def _read_holder(path: Path) -> Holder:
    try:
        info = json.loads(path.read_text() or "{}")
        return Holder(info.get("pid"), info.get("started_at"))
    except (OSError, ValueError):
        return Holder(None, None)


def flock_within(path: Path, timeout: float, interval: float = 0.02) -> int | None:
    """Open `path` (created if needed) and take an exclusive flock, retrying until
    `timeout`. Returns the fd (closing it releases the lock), or None if still held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(interval)


class DaemonLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, retry_seconds: float = 0.5) -> None:
        """Take the lock or raise AlreadyRunning naming the holder.

        Retries briefly because `holder()` (used by `trainerd status`) takes the lock for a
        few microseconds to probe it; a start must not fail on that probe.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = flock_within(self.path, retry_seconds)
        if fd is None:
            raise AlreadyRunning(
                f"trainerd is already running ({_read_holder(self.path).describe()}) on "
                f"{self.path.parent.parent}; stop it with `trainerd stop` or use another --base-dir"
            )
        self._fd = fd
        info = json.dumps({"pid": os.getpid(), "started_at": time.time()}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
            os.fsync(fd)
        except OSError as e:
            # The flock is the truth; the pid inside is only for people. A full disk must
            # not stop the daemon from starting: it then pauses itself until space returns.
            log.warning("holding %s, but could not write the pid into it (%s)", self.path, e.strerror or e)

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: Path) -> Holder | None:
    """The live holder of the lock, or None when no daemon holds it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # A shared probe: fails only while a daemon holds the exclusive lock.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return _read_holder(path)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    return None
