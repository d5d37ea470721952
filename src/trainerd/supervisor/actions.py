"""Carrying out the attempt policy's actions (trainerd.attempts): done with the version
and the gate's verdict recorded, failed, requeued, left to resume, paused; the same for the
attempts the daemon's own death cut short, and for a skip of a job no worker runs.

A mixin of Supervisor (trainerd.supervisor.loop): it shares the supervisor's attributes."""

from __future__ import annotations

import contextlib
import logging
import time

from trainerd import attempts, control, oplog
from trainerd.jobs import JobMeta, JobState, Outcome
from trainerd.queue import JobRef

log = logging.getLogger("trainerd.supervisor")


class Actions:
    def _recover_interrupted(self) -> None:
        """The attempts that ran when the daemon died: ended, counted, and decided on."""
        closed, notes = self.queue.close_interrupted()
        for note in notes:
            log.warning("recovery: %s", note)
        for ref, meta in closed:
            a = meta.attempts[-1]
            action = attempts.decide(Outcome.INTERRUPTED, a.error, meta, self.cfg)
            self._carry_out(ref, meta, action)
            log.warning("recovery: %s: attempt %d was interrupted; %s", ref.id, a.number,
                        "no attempts left, failed" if action.do == attempts.Do.FAIL else
                        "it will be resumed first (no back-off: the daemon's death is not the job's doing)")

    def _carry_out(self, ref: JobRef, meta: JobMeta, action: attempts.Action,
                   ctx: dict[str, int] | None = None) -> None:
        """Do what the attempt policy (trainerd.attempts) decided."""
        if action.clear_skip:
            control.clear_skip(self.layout)
        if action.changes or action.note:
            meta = self.queue.amend(ref, action.changes, action.note)
        if action.warning:
            log.warning("%s: %s", ref.id, action.warning, extra=ctx)
        if action.do == attempts.Do.DONE:
            meta = self._record_gate(ref, meta)
            self._record_publish(ref, meta, ctx)
            self.queue.finish(ref)
        elif action.do == attempts.Do.FAIL:
            self.queue.fail(ref, action.reason or "failed", stage=action.stage, **action.detail)
        elif action.do == attempts.Do.REQUEUE:
            self.queue.release(ref, time.time() + action.delay, front=action.front)
        elif action.do == attempts.Do.PAUSE_DISK:
            self._pause_for_disk(action.reason or "disk full")
        elif action.do == attempts.Do.PAUSE_MODEL:
            self.model.set_pause(action.reason or "the model cannot be loaded")
        # Do.STAY: nothing to move; the job is claimed first and resumes from its checkpoint

    def _record_publish(self, ref: JobRef, meta: JobMeta, ctx: dict[str, int] | None) -> None:
        """The publish line in the log and the ledger's `trained` event: what the /metrics
        counters and the duration histogram sum, kept after the job is removed."""
        from trainerd.history import TRAINED_EVENT, trained_event
        from trainerd.line.refs import published_version

        try:
            version = published_version(self.layout, self.cfg, meta)
        except Exception:  # a broken current version: the line says "?"
            version = None
        facts = trained_event(meta, version)
        self._event(TRAINED_EVENT, ref.id, **facts)
        attempt = (ctx or {}).get("attempt", len(meta.attempts))
        line = oplog.publish_line(ref.id, meta.original_name, facts, oplog.final_probe(ref.path, attempt))
        log.info("%s", line, extra={"job_id": ref.id, "attempt": attempt, "version": version})

    def _record_gate(self, ref: JobRef, meta: JobMeta) -> JobMeta:
        """The version the job published and the eval gate's decision, into job.json and
        state.db (the version's manifest holds the original)."""
        from trainerd.line.forgetting import version_of_job

        found = version_of_job(self.layout, ref.id)
        if found is None:
            return meta
        version, gate = found[0], found[1].get("gate")
        with contextlib.suppress(OSError):  # history for people; the version itself is on disk
            meta = self.queue.record_version(ref, version, gate)
        if gate:
            log.log(logging.WARNING if gate.get("action") != "current" else logging.INFO,
                    "%s: %s %s", ref.id, version, gate.get("verdict"))
            self._event("gate", ref.id, version=version, **gate)
        return meta

    def _apply_idle_skip(self, skip: control.Skip) -> None:
        """A skip for a job sitting in active/ with no worker (paused or stopped)."""
        for ref in self.queue.list(JobState.ACTIVE):
            if ref.id == skip.job_id:
                self._carry_out(ref, ref.meta(), attempts.skipped_action(skip.reason))
                break
        control.clear_skip(self.layout)  # a skip never outlives its job's activity
