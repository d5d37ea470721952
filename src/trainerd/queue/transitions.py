"""The daemon's transitions of a job: claim, finish, fail, release after a back-off, and
the record of each attempt's start, end and progress in job.json. Each state change is
one rename inside the base dir; the attempt policy that picks among them is
trainerd.attempts."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from trainerd import atomic
from trainerd.jobs import ERROR_JSON, Attempt, JobMeta, JobState, Outcome, Priority
from trainerd.paths import PRIORITIES
from trainerd.queue import record
from trainerd.queue.listing import QueueBase
from trainerd.queue.record import AMENDABLE, JobRef, Progress


class Transitions(QueueBase):
    def claim(self, now: float | None = None) -> JobRef | None:
        """The job to run next: one left active by a crash first, then high, normal, low,
        FIFO by arrival within each, skipping those still in back-off."""
        now = time.time() if now is None else now
        active = self.list(JobState.ACTIVE)
        if active:
            return active[0]
        for prio in PRIORITIES:
            for ref in self.list(JobState.QUEUED):
                if ref.priority != Priority(prio):
                    continue
                try:
                    if ref.meta().not_before > now:
                        continue
                    dest = self.layout.active / ref.id
                    atomic.rename(ref.path, dest)
                except FileNotFoundError:
                    continue  # moved or removed by the CLI a moment ago
                self._event("claimed", ref.id, priority=prio)
                return JobRef(ref.id, JobState.ACTIVE, dest)
        return None

    def next_wakeup(self) -> float | None:
        """Earliest time a backed-off queued job becomes claimable (None if nothing waits)."""
        times = []
        for ref in self.list(JobState.QUEUED):
            with contextlib.suppress(Exception):
                times.append(ref.meta().not_before)
        return min(times) if times else None

    def finish(self, ref: JobRef) -> JobRef:
        dest = self.layout.done / ref.id
        atomic.rename(ref.path, dest)
        self._event("done", ref.id)
        return JobRef(ref.id, JobState.DONE, dest)

    def fail(self, ref: JobRef, reason: str, **detail: Any) -> JobRef:
        atomic.write_json(ref.path / ERROR_JSON, {"reason": reason, "at": time.time(), **detail})
        dest = self.layout.failed / ref.id
        atomic.rename(ref.path, dest)
        self._event("failed", ref.id, reason=reason)
        return JobRef(ref.id, JobState.FAILED, dest)

    def release(self, ref: JobRef, not_before: float = 0.0) -> JobRef:
        """Active -> queued (a retry after back-off), into the folder it was claimed from."""
        meta = ref.meta()
        prio = meta.attempts[-1].priority if meta.attempts and meta.attempts[-1].priority else meta.priority
        meta.not_before = not_before
        record.save_meta(ref.path, meta)
        dest = self.layout.queued(Priority(prio).value) / ref.id
        atomic.rename(ref.path, dest)
        self._event("retry_scheduled", ref.id, not_before=not_before)
        return JobRef(ref.id, JobState.QUEUED, dest, Priority(prio))

    def record_attempt_end(self, ref: JobRef, outcome: Outcome, exit_code: int | None,
                           error: str | None, progress: Progress | None = None) -> JobMeta:
        """The attempt's end and what it got through, in one write: a reader that sees the
        outcome sees the steps it trained too."""
        meta = ref.meta()
        if meta.attempts and meta.attempts[-1].ended_at is None:
            a = meta.attempts[-1]
            a.ended_at, a.outcome, a.exit_code, a.error = time.time(), outcome, exit_code, error
        if progress is not None:
            progress.apply(meta)
        record.save_meta(ref.path, meta)
        self._event("attempt_end", ref.id, outcome=outcome.value, exit_code=exit_code, error=error)
        return meta

    def record_attempt_start(self, ref: JobRef, pid: int | None, priority: Priority) -> JobMeta:
        meta = ref.meta()
        meta.attempts.append(Attempt(number=len(meta.attempts) + 1, started_at=time.time(),
                                     pid=pid, priority=priority))
        record.save_meta(ref.path, meta)
        self._event("attempt_start", ref.id, number=len(meta.attempts), pid=pid)
        return meta

    def record_worker_pid(self, ref: JobRef, pid: int) -> None:
        """The live attempt's worker pid, for people (`trainerd status`, job.json)."""
        meta = ref.meta()
        if meta.attempts:
            meta.attempts[-1].pid = pid
            record.save_meta(ref.path, meta)

    def amend(self, ref: JobRef, changes: dict[str, Any], note: dict[str, Any] | None = None) -> JobMeta:
        """Set what the attempt policy changes (trainerd.attempts: the OOM fallback's
        micro-batch, the divergence count) and add its note to the job's history."""
        unknown = set(changes) - AMENDABLE
        if unknown:
            raise ValueError(f"job.json fields {sorted(unknown)} are not the attempt policy's to change")
        meta = ref.meta()
        for k, v in changes.items():
            setattr(meta, k, v)
        if note:
            meta.history.append({"at": time.time(), **note})
        record.save_meta(ref.path, meta)
        return meta

    def record_version(self, ref: JobRef, version: str, gate: dict[str, Any] | None) -> JobMeta:
        """The version the job published and the eval gate's decision (the version's
        manifest holds the original)."""
        meta = ref.meta()
        meta.version, meta.gate = version, gate
        record.save_meta(ref.path, meta)
        return meta


    def close_interrupted(self) -> tuple[list[tuple[JobRef, JobMeta]], list[str]]:
        """At start-up, after recover(): the attempts that were running when the daemon died
        get their end (INTERRUPTED). Returns those jobs, for the attempt policy to decide
        on (trainerd.attempts), and notes on the jobs it could not read."""
        closed: list[tuple[JobRef, JobMeta]] = []
        notes: list[str] = []
        for ref in self.list(JobState.ACTIVE):
            try:
                meta = ref.meta()
            except (OSError, ValueError) as e:
                notes.append(f"{ref.id}: job.json unreadable ({e}); left in active/ for inspection")
                continue
            if meta.attempts and meta.attempts[-1].ended_at is None:
                a = meta.attempts[-1]
                a.ended_at, a.outcome = time.time(), Outcome.INTERRUPTED
                a.error = "the daemon stopped while this attempt ran (crash, kill -9 or power loss)"
                record.save_meta(ref.path, meta)
                self._event("attempt_end", ref.id, outcome=a.outcome.value, error=a.error)
                closed.append((ref, meta))
        return closed, notes
