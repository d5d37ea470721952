"""The user's edits of queued and finished jobs (the CLI's queue move/remove/requeue, the
dashboard's wishes): each first renames the job into a flocked staging folder, so the
daemon can never claim a job while it is being rewritten."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from trainerd import atomic
from trainerd.jobs import (
    DATA,
    ERROR_JSON,
    METRICS,
    PROGRESS_JSON,
    WORKER_ERROR,
    WORKER_LOG,
    JobMeta,
    JobState,
    Priority,
)
from trainerd.queue import record
from trainerd.queue.intake import _hash_and_validate
from trainerd.queue.listing import QueueBase
from trainerd.queue.record import JobRef, QueueError


class Edits(QueueBase):
    @contextlib.contextmanager
    def _restage(self, ref: JobRef) -> Iterator[Path]:
        """Rename a job into private staging for an edit; FileNotFoundError if the daemon
        claimed it first. If the edit fails, the job goes back where it was."""
        stage = self.layout.incoming / ref.id
        stage.mkdir(parents=True)
        # Lock the empty placeholder first, then rename the job onto it: rename() replaces
        # an empty directory atomically, so nobody ever sees the job unlocked in staging.
        with self._staging(ref.id, create=False) as d:
            try:
                os.rename(ref.path, d)
            except BaseException:
                with contextlib.suppress(OSError):
                    stage.rmdir()
                raise
            try:
                yield d
            except BaseException:
                if d.exists():
                    atomic.rename(d, ref.path)
                raise

    def move(self, job_id: str, priority: Priority) -> JobRef:
        ref = self.find(job_id)
        if ref.state != JobState.QUEUED:
            raise QueueError(f"{job_id} is {ref.state.value}; only queued jobs change priority")
        try:
            with self._restage(ref) as stage:
                meta = JobMeta.load(stage)
                meta.priority = priority
                meta.history.append({"at": time.time(), "event": "priority", "to": priority.value})
                record.save_meta(stage, meta)
                dest = self.layout.queued(priority.value) / job_id
                atomic.rename(stage, dest)
        except FileNotFoundError:
            raise QueueError(f"{job_id} was claimed by the daemon a moment ago; it is training now") from None
        self._event("moved", job_id, priority=priority.value)
        return JobRef(job_id, JobState.QUEUED, dest, priority)

    def remove(self, job_id: str) -> None:
        ref = self.find(job_id)
        if ref.state == JobState.ACTIVE:
            raise QueueError(f"{job_id} is training right now; use `trainerd skip` to stop it first")
        try:
            with self._restage(ref) as stage:
                shutil.rmtree(stage)
        except FileNotFoundError:
            raise QueueError(f"{job_id} changed state a moment ago; look again with `trainerd queue list`") from None
        self._event("removed", job_id, from_state=ref.state.value)

    def requeue(self, job_id: str, priority: Priority | None = None) -> JobRef:
        ref = self.find(job_id)
        if ref.state not in (JobState.FAILED, JobState.DONE):
            raise QueueError(f"{job_id} is {ref.state.value}; only failed or done jobs can be requeued")
        if not (ref.path / DATA).is_file() or (ref.path / DATA).is_symlink():
            raise QueueError(f"{job_id} has no data file to train (it was rejected at intake); "
                             "deliver a corrected file instead")
        with self._restage(ref) as stage:
            meta = JobMeta.load(stage)
            report, _sha, _size = _hash_and_validate(stage / DATA, meta.original_name, self.data_map)
            prio = priority or meta.priority
            meta.history.append({"at": time.time(), "event": "requeued", "from": ref.state.value,
                                 "previous_attempts": [a.model_dump(mode="json") for a in meta.attempts],
                                 "previous_error": _read_reason(stage)})
            meta.attempts, meta.not_before, meta.priority = [], 0.0, prio
            meta.examples_done = meta.steps_done = 0
            meta.first_loss = meta.last_loss = None
            meta.micro_batch_size, meta.nonfinite_events, meta.preempted_by = None, 0, None
            meta.examples = report.examples
            if not report.ok:
                raise QueueError(f"{job_id} still does not validate: {report.reason()}")
            record.save_meta(stage, meta)
            _archive_run(stage)
            dest = self.layout.queued(prio.value) / job_id
            atomic.rename(stage, dest)
        self._event("requeued", job_id, from_state=ref.state.value)
        return JobRef(job_id, JobState.QUEUED, dest, prio)


RUN_FILES = (ERROR_JSON, PROGRESS_JSON, METRICS, WORKER_LOG, WORKER_ERROR)


def _archive_run(job_dir: Path) -> None:
    """Keep a previous run's record under history/<time>/ so the new run starts clean."""
    present = [n for n in RUN_FILES if (job_dir / n).exists()]
    if not present:
        return
    dest = job_dir / "history" / time.strftime("%Y%m%dT%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for n in present:
        os.rename(job_dir / n, dest / n)


def _read_reason(job_dir: Path) -> str | None:
    try:
        return atomic.read_json(job_dir / ERROR_JSON).get("reason")
    except (OSError, ValueError):
        return None
