"""One GPU, one user at a time: training or an ad-hoc generation, never both.

A generation that shares the GPU with a training worker can push it out of memory, and
the worker then shrinks its micro-batch for good (the OOM fallback). So `run/gpu.lock`
(a kernel flock: truth is derived, it vanishes with its holder) arbitrates:

- the supervisor holds it exclusively from the claim of a job until its attempt ends; it
  claims nothing while a generation holds it (the job waits for that answer);
- `trainerd generate / chat / compare` and the dashboard's box take it shared, without
  waiting, only when they would run on a GPU; while training holds it they refuse with the
  reason (or run with --device cpu). On the CPU they take nothing and run niced.

Torch-free: the supervisor and the CLI import it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from trainerd import atomic
from trainerd.paths import Layout

GATE = "gpu.lock"
BUSY_EXIT = 75  # EX_TEMPFAIL: a generation refused because training has the GPU


class GpuBusy(Exception):
    """Training holds the GPU; the message says which job and what to do instead."""


def _open(layout: Layout) -> int:
    layout.run.mkdir(parents=True, exist_ok=True)
    return os.open(layout.run / GATE, os.O_RDWR | os.O_CREAT, 0o644)


class TrainingHold:
    """The supervisor's side: exclusive while a worker trains."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.fd: int | None = None

    def acquire(self, what: str) -> bool:
        """True when held (now or already); False while a generation uses the GPU."""
        if self.fd is not None:
            return True
        fd = _open(self.layout)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, what.encode(), 0)  # for the refusal message of a generation
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _training_reason(layout: Layout) -> str | None:
    """Why the GPU is not free for a generation, read from disk, or None."""
    from trainerd.line.lock import training_job

    job = training_job(layout)
    if job is not None:
        return f"job {job} is training on the GPU"
    with contextlib.suppress(OSError, ValueError):
        if (atomic.read_json(layout.status) or {}).get("housework") == "consolidate":
            from trainerd.lock import holder

            if holder(layout.lock) is not None:
                return "a consolidation is merging the model on the GPU"
    return None


@contextlib.contextmanager
def generation_hold(layout: Layout) -> Iterator[None]:
    """Shared hold for a generation on the GPU; GpuBusy at once if training has it."""
    fd = _open(layout)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            what = os.pread(fd, 500, 0).decode("utf-8", "replace").strip()
            raise GpuBusy(_refusal(what or "the daemon is training on it")) from None
        why = _training_reason(layout)  # a job claimed before the gate existed, a consolidation
        if why:
            raise GpuBusy(_refusal(why))
        yield
    finally:
        os.close(fd)


def _refusal(why: str) -> str:
    return (f"the GPU is busy: {why}. Sharing it could push training out of memory (it would then "
            "shrink its micro-batch for good). Run with --device cpu, or `trainerd pause` and try again "
            "once the job has checkpointed")
