"""The queue's view of its folders: where each job is, how many there are, new job ids,
and the private staging folder every intake and edit works in. The other parts of the
Queue (intake, transitions, recovery, edits) build on this base."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainerd import atomic, dircache
from trainerd.config import DataMapConfig, QueueConfig
from trainerd.formats import NO_MAP
from trainerd.inbox import Settler
from trainerd.jobs import JobState, Priority
from trainerd.paths import PRIORITIES, Layout
from trainerd.queue.record import JOB_ID, EventSink, JobRef, QueueError

log = logging.getLogger("trainerd.queue")


def _slug(name: str) -> str:
    stem = name.removesuffix(".jsonl").removesuffix(".json")
    return (re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "job")[:40]


class QueueBase:
    def __init__(self, layout: Layout, cfg: QueueConfig, on_event: EventSink | None = None,
                 data_map: DataMapConfig = NO_MAP):
        self.layout = layout
        self.cfg = cfg
        self.data_map = data_map  # [data.map]: the user's own format is valid at intake too
        self._on_event = on_event
        self._last_id_us = 0
        self._rejected_in_place: set[tuple[str, int, int]] = set()
        # Intake writes without per-file fsyncs and makes them all at the end of the slice
        # (one Barrier): every intermediate state is recoverable (see recover), so a crash
        # before it loses nothing, and 10,000 files are taken in seconds, not a minute.
        # "queued" is said only after the barrier: then it is true after a power cut.
        self._sync = True
        self._barrier: atomic.Barrier | None = None
        self._retry_at = 0.0  # monotonic time of the next look for abandoned intakes
        self._retry_noted: set[str] = set()
        self.settler = Settler()  # what this process has seen of each inbox entry
        self.blocked: str | None = None  # why intake cannot go on right now (e.g. no file descriptors)

    def _event(self, kind: str, job_id: str | None = None, **data: Any) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, job_id, **data)
            except Exception:  # history must never break the queue
                log.exception("could not record event %s for %s", kind, job_id)

    def _all_state_dirs(self) -> list[tuple[JobState, Priority | None, Path]]:
        out: list[tuple[JobState, Priority | None, Path]] = [
            (JobState.QUEUED, Priority(p), self.layout.queued(p)) for p in PRIORITIES
        ]
        out += [
            (JobState.ACTIVE, None, self.layout.active),
            (JobState.DONE, None, self.layout.done),
            (JobState.FAILED, None, self.layout.failed),
        ]
        return out

    def _exists_anywhere(self, job_id: str) -> bool:
        return (self.layout.incoming / job_id).exists() or any(
            (d / job_id).exists() for _s, _p, d in self._all_state_dirs()
        )

    def new_job_id(self, name: str, now: float | None = None) -> str:
        """Sortable by arrival (microsecond clock) and unique across every state folder."""
        us = int((now if now is not None else time.time()) * 1_000_000)
        us = max(us, self._last_id_us + 1)
        while True:
            t, frac = divmod(us, 1_000_000)
            job_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(t))}-{frac:06d}-{_slug(name)}"
            if not self._exists_anywhere(job_id):
                self._last_id_us = us
                return job_id
            us += 1

    @contextlib.contextmanager
    def _staging(self, job_id: str, create: bool = True) -> Iterator[Path]:
        """A private folder jobs/.incoming/<id>, flocked for as long as we work in it.

        Lock-then-verify: whoever recovers abandoned staging folders takes the same lock,
        so a folder that exists and is locked is somebody's work in progress.
        """
        d = self.layout.incoming / job_id
        if create:
            d.mkdir(parents=True)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield d
        finally:
            os.close(fd)

    def find(self, job_id: str) -> JobRef:
        if not JOB_ID.fullmatch(job_id):
            raise QueueError(f"{job_id[:80]!r} is not a job id (like 20261123T101500-123456-name); "
                             "`trainerd queue list --state all` shows them")
        for state, prio, d in self._all_state_dirs():
            if (d / job_id).is_dir():
                return JobRef(job_id, state, d / job_id, prio)
        raise QueueError(f"no job with id {job_id!r}; `trainerd queue list --state all` shows the ids")

    def list(self, state: JobState | None = None) -> list[JobRef]:
        refs = []
        for st, prio, d in self._all_state_dirs():
            if state is not None and st != state:
                continue
            try:
                names = sorted(os.listdir(d))
            except FileNotFoundError:
                continue
            refs += [JobRef(n, st, d / n, prio) for n in names if not n.startswith(".")]
        return refs

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for st, prio, d in self._all_state_dirs():
            try:
                n = dircache.count(d)  # a stat while the folder is unchanged (10,000 done jobs)
            except OSError:  # reporting must work even when a folder is broken
                n = 0
            key = f"queued_{prio.value}" if prio else st.value
            out[key] = n
        out["queued"] = sum(out[f"queued_{p}"] for p in PRIORITIES)
        return out
