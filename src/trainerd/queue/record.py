"""What a job is to the queue: a reference to its folder, the queue's error, the job-id
rule, and the writer of job.json.

job.json has one writer, the queue (issue 17): every change to a job's record goes through
a Queue method, so no two writers race on the file and one place says what is in it."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.jobs import JOB_JSON, JobMeta, JobState, Priority

# Running out of file descriptors is the daemon's condition, not the entry's: never a rejection.
FD_EXHAUSTED = (errno.EMFILE, errno.ENFILE)

EventSink = Callable[..., None]
JOB_ID = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9]{6}-[A-Za-z0-9._-]{1,40}")


class QueueError(Exception):
    """A queue operation that cannot be done, with what to do instead."""


@dataclass(frozen=True)
class JobRef:
    id: str
    state: JobState
    path: Path
    priority: Priority | None = None  # for queued jobs: the folder it is in

    def meta(self) -> JobMeta:
        return JobMeta.load(self.path)


@dataclass(frozen=True)
class Progress:
    """What an attempt got through, for job.json: the worker's last progress.json, the
    token cache's counts (what train.overlength did) and the run's loss curve."""

    progress: dict[str, Any] | None = None
    counts: dict[str, int] | None = None
    curve: list[float] = field(default_factory=list)

    def apply(self, meta: JobMeta) -> None:
        if self.progress:
            meta.examples_done = int(self.progress.get("examples_done", meta.examples_done))
            meta.steps_done = int(self.progress.get("step", meta.steps_done))
        if self.counts:
            meta.sequences, meta.tokens = self.counts["sequences"], self.counts["tokens"]
            meta.dropped, meta.truncated = self.counts["dropped"], self.counts["truncated"]
        if self.curve:
            meta.first_loss, meta.last_loss = self.curve[0], self.curve[-1]


AMENDABLE = frozenset({"micro_batch_size", "nonfinite_events", "preempted_by"})  # Queue.amend's fields


def save_meta(job_dir: Path, meta: JobMeta, sync: bool = True) -> None:
    """Write job.json. The queue is its only writer (issue 17): every change to a job's
    record goes through a Queue method, so no two writers race on the file."""
    atomic.write_json(Path(job_dir) / JOB_JSON, meta.model_dump(mode="json"), sync=sync)
