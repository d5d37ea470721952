"""Where an attempt's wall time went: named spans, written to the job's worker-timings.json.

The worker marks the end of each stage (imports, model load, parent scoring, training,
publishing...); a span is the time since the previous mark. For people and for
bench/per_job.py, never for a decision: the file is written without fsync at the end of
the attempt and may be missing after a crash. Torch-free.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.jobs import WORKER_TIMINGS


class Spans:
    def __init__(self) -> None:
        self.started_at = time.time()  # wall clock: the daemon's records are in it too
        self._last = time.monotonic()
        self.spans: dict[str, float] = {}

    def mark(self, name: str) -> None:
        """The stage `name` ended now (repeated names add up)."""
        now = time.monotonic()
        self.spans[name] = self.spans.get(name, 0.0) + now - self._last
        self._last = now

    def record(self, **facts: Any) -> dict[str, Any]:
        return {"pid": os.getpid(), "started_at": self.started_at, "ended_at": time.time(),
                "spans": {k: round(v, 4) for k, v in self.spans.items()}, **facts}


_current: Spans | None = None


def begin() -> Spans:
    """Start timing an attempt."""
    global _current
    _current = Spans()
    return _current


def mark(name: str) -> None:
    if _current is not None:
        _current.mark(name)


def write(job_dir: Path, **facts: Any) -> None:
    """The attempt's spans into job_dir (best effort: timings never fail a job)."""
    if _current is None or int(os.environ.get("RANK", "0")) != 0:
        return
    try:
        atomic.write_json(job_dir / WORKER_TIMINGS, _current.record(**facts), sync=False)
    except OSError:
        pass
