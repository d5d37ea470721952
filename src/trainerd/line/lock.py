"""run/models.lock: one change to models/ and snapshots/ at a time, between processes;
and which job's worker is training right now."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from trainerd.jobs import WORKER_LOCK
from trainerd.line.errors import Busy
from trainerd.lock import flock_within
from trainerd.paths import Layout

MODELS_LOCK = "models.lock"


@contextlib.contextmanager
def models_lock(layout: Layout, what: str, timeout: float = 10.0) -> Iterator[None]:
    """Serialise changes to models/ and snapshots/ between processes (kernel flock; the
    holder's pid and task are written inside for the error message)."""
    path = layout.run / MODELS_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = flock_within(path, timeout, interval=0.1)
    if fd is None:
        holder = ""
        with contextlib.suppress(OSError):
            holder = path.read_text("utf-8", "replace").strip()
        raise Busy(f"models are busy ({holder or 'another process'}); try again when it has finished")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what}, pid {os.getpid()}, since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def training_job(layout: Layout) -> str | None:
    """The active job whose worker is training right now (its job lock is held)."""
    if not layout.active.is_dir():
        return None
    for d in sorted(layout.active.iterdir()):
        try:
            fd = os.open(d / WORKER_LOCK, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe; released at once
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            return d.name
        finally:
            os.close(fd)
    return None
