"""The anti-stuck monitor: is the worker still making progress?

The worker rewrites heartbeat.json (trainerd.worker.heartbeat) with its phase (loading,
tokenizing, training, eval, publishing), its step and a count of beats that only moves
with real progress: a step, an eval example, a phase change, or CPU or disk work of its
main thread while it loads, tokenizes or publishes. So a 20-minute model load from a slow
disk keeps beating, while a frozen process, an eval blocked on a read or a deadlocked
collective does not. This side compares what it reads, on its own monotonic clock (the
worker's wall-clock times are never trusted): nothing changed for `stall_seconds` is a stall.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.jobs import HEARTBEAT_JSON


class StallWatch:
    def __init__(self, job_dir: Path, stall_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.path = job_dir / HEARTBEAT_JSON
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.changed_at = clock()  # from the spawn: a worker that never beats stalls too
        self._sig: tuple | None = None
        self.last: dict[str, Any] = {}

    @property
    def phase(self) -> str:
        return str(self.last.get("phase") or "starting")

    @property
    def step(self) -> int:
        return int(self.last.get("step") or 0)

    def idle_seconds(self) -> float:
        """Seconds since the heartbeat last changed, re-reading it first."""
        try:
            hb = atomic.read_json(self.path)
        except (OSError, ValueError):  # not written yet, or replaced as we read
            hb = None
        if hb is not None:
            sig = (hb.get("pid"), hb.get("phase"), hb.get("step"), hb.get("beats"))
            if sig != self._sig:
                self._sig, self.last, self.changed_at = sig, hb, self.clock()
        return self.clock() - self.changed_at

    def look(self) -> str | None:
        """A sentence for the attempt's record when the worker has stalled, else None."""
        idle = self.idle_seconds()
        if idle < self.stall_seconds:
            return None
        return f"stalled at step {self.step} in {self.phase} for {idle:.0f} s (daemon.stall_seconds = " \
               f"{self.stall_seconds:g})"
