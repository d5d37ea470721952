"""One live training attempt as the supervisor sees it: the worker process (or torchrun
group), why we asked it to stop, its stall watch; and the worker's own account of a failure."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from trainerd import atomic, control
from trainerd.jobs import WORKER_ERROR, WORKER_LOG, WORKER_OUTCOME, Priority, describe_exit
from trainerd.queue import JobRef
from trainerd.stall import StallWatch

LOG_TAIL_BYTES = 4000


def log_tail(path: Path, nbytes: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - nbytes))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def worker_failure_reason(job_dir: Path, exit_code: int | None) -> str:
    """The worker's own account (worker-error.json) if it wrote one, else its log tail."""
    how = describe_exit(exit_code)
    try:
        err = atomic.read_json(job_dir / WORKER_ERROR)
        return f"worker {how}: {err.get('message', '').strip()}"
    except (OSError, ValueError):
        pass
    tail = log_tail(job_dir / WORKER_LOG, 1500)
    last = tail.splitlines()[-8:] if tail else []
    return f"worker {how}" + (": ..." + "\n".join(last) if last else " with no output")


@dataclass
class Running:
    """One live attempt."""

    ref: JobRef
    proc: subprocess.Popen
    attempt: int
    started: float = field(default_factory=time.monotonic)
    stop_sent_at: float | None = None
    stop_reason: str | None = None
    skip: control.Skip | None = None
    group: bool = False  # a torchrun group (worker/launch.py): proc is the agent
    watch: StallWatch | None = None  # the anti-stuck monitor of this attempt
    stall: str | None = None  # set when it stalled: why, for the attempt's record
    priority: Priority = Priority.NORMAL  # the queue folder it was claimed from (queue.preempt)
    preempt_checked_at: float = 0.0  # monotonic time the queue was last looked at for preemption

    @property
    def log_ctx(self) -> dict[str, int]:
        """extra= for log records about this attempt (JSON logs carry it; trainerd.oplog)."""
        return {"attempt": self.attempt}

    def signal(self, sig: int) -> None:
        """A warm stop goes to the ranks themselves: torchrun would give them only 30 s
        to finish after being signalled, less than a big checkpoint may need. While the
        group is still starting (no ranks yet), the agent itself gets it."""
        ranks = []
        if self.group:
            with contextlib.suppress(psutil.Error):
                ranks = psutil.Process(self.proc.pid).children()
        for p in ranks:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        if not ranks:
            self.proc.send_signal(sig)

    def exit_code(self, rc: int) -> int:
        """A group's outcome is what rank 0 wrote; without it (the group died before rank 0
        could say), torchrun's own status stands."""
        if self.group:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                return int(json.loads((self.ref.path / WORKER_OUTCOME).read_text())["exit"])
        return rc
