"""The daemon's transitions of a job: claim, finish, fail, release after a back-off, and
the record of each attempt's start, end and progress in job.json. Each state change is
one rename inside the base dir; the attempt policy that picks among them is
trainerd.attempts."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from trainerd import atomic
from trainerd.jobs import ERROR_JSON, Attempt, JobMeta, JobState, Outcome, Priority
from trainerd.paths import PRIORITIES
from trainerd.queue import record
from trainerd.queue.listing import QueueBase
from trainerd.queue.record import AMENDABLE, JobRef, Progress

# In a queued/<priority>/ folder (a dot name: never listed as a job): the ids of jobs a
# preemption sent back (queue.preempt), claimed before the others of that priority.
FRONT = ".front.json"


class Transitions(QueueBase):
    def claim(self, now: float | None = None) -> JobRef | None:
        """The job to run next: one left active by a crash first, then high, normal, low;
        within each, the preempted first, then FIFO by arrival, skipping those in back-off."""
        now = time.time() if now is None else now
        active = self.list(JobState.ACTIVE)
        if active:
            return active[0]
        for prio in PRIORITIES:
            front = self._front(prio)
            for ref in sorted(self._queued(prio), key=lambda r: r.id not in front):  # stable: FIFO kept
                try:
                    if ref.meta().not_before > now:
                        continue
                    dest = self.layout.active / ref.id
                    atomic.rename(ref.path, dest)
                except FileNotFoundError:
                    continue  # moved or removed by the CLI a moment ago
                if front:  # the claimed one, and any the user moved or removed since
                    self._set_front(prio, [i for i in front if i != ref.id and (self.layout.queued(prio) / i).is_dir()])
                self._event("claimed", ref.id, priority=prio)
                return JobRef(ref.id, JobState.ACTIVE, dest)
        return None

    def claimable_above(self, priority: Priority, now: float | None = None) -> JobRef | None:
        """A queued job of higher priority than `priority` that could be claimed now (not in
        back-off): what makes the supervisor preempt a running job (queue.preempt)."""
        now = time.time() if now is None else now
        for prio in PRIORITIES[:PRIORITIES.index(priority.value)]:
            for ref in self._queued(prio):
                with contextlib.suppress(OSError, ValueError):  # moved, or job.json mid-rewrite
                    if ref.meta().not_before <= now:
                        return ref
        return None

    def _queued(self, prio: str) -> list[JobRef]:
        try:
            names = sorted(os.listdir(self.layout.queued(prio)))
        except FileNotFoundError:
            return []
        return [JobRef(n, JobState.QUEUED, self.layout.queued(prio) / n, Priority(prio))
                for n in names if not n.startswith(".")]

    def _front(self, prio: str) -> list[str]:
        try:
            ids = atomic.read_json(self.layout.queued(prio) / FRONT)
        except (OSError, ValueError):
            return []
        return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []

    def _set_front(self, prio: str, ids: list[str]) -> None:
        if ids:
            atomic.write_json(self.layout.queued(prio) / FRONT, ids)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.layout.queued(prio) / FRONT)

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

    def release(self, ref: JobRef, not_before: float = 0.0, front: bool = False) -> JobRef:
        """Active -> queued (a retry after back-off), into the folder it was claimed from;
        `front`: claimed before the others there (a preempted job)."""
        meta = ref.meta()
        prio = meta.attempts[-1].priority if meta.attempts and meta.attempts[-1].priority else meta.priority
        meta.not_before = not_before
        record.save_meta(ref.path, meta)
        if front:  # first: a crash before the rename leaves the job in active/, resumed first anyway
            self._set_front(Priority(prio).value, [ref.id, *self._front(Priority(prio).value)])
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
