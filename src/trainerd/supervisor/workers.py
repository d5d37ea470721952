"""Running workers: claim a job with the GPU held, start its worker, watch it (stop
requests, skips, stalls, the grace before SIGKILL), and, when it exits, record the attempt
and hand its outcome to the attempt policy (trainerd.attempts).

A mixin of Supervisor (trainerd.supervisor.loop): it shares the supervisor's attributes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time

from trainerd import atomic, attempts, control
from trainerd.control import Desired
from trainerd.jobs import (
    EVALS,
    HEARTBEAT_JSON,
    METRICS,
    PROGRESS_JSON,
    WORKER_ERROR,
    WORKER_LOG,
    WORKER_OUTCOME,
    Outcome,
    Priority,
    child_env,
    describe_exit,
    token_counts,
)
from trainerd.queue import JobRef, Progress
from trainerd.stall import StallWatch
from trainerd.state import DaemonState
from trainerd.supervisor.running import Running, worker_failure_reason

log = logging.getLogger("trainerd.supervisor")


class Workers:
    def _claim(self) -> JobRef | None:
        """The next job, with the GPU gate held for it; none while a generation (trainerd
        generate/chat/compare, the dashboard's box) holds the GPU: the job waits for it."""
        if not self.gpu.acquire(f"the daemon (pid {os.getpid()}) is training"):
            if self.queue.counts()["queued"]:
                log.debug("a generation holds the GPU; the next job waits for it")
            return None
        ref = self.queue.claim()
        if ref is None:
            self.gpu.release()
        return ref

    def _spawn(self, ref: JobRef) -> None:
        prio = self._claimed_priority(ref)
        for stale in (WORKER_ERROR, WORKER_OUTCOME, HEARTBEAT_JSON):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ref.path / stale)
        group = self.cfg.train.nproc > 1 or bool(self.cfg.train.torchrun_args)
        cmd = [sys.executable, "-m", "trainerd.worker.launch"] if group else self.worker_cmd
        env = child_env()
        env["TRAINERD_HEARTBEAT_SECONDS"] = str(min(self.cfg.daemon.heartbeat_seconds, self.cfg.daemon.stall_seconds / 4))
        meta = self.queue.record_attempt_start(ref, None, prio)
        attempt = meta.attempts[-1].number
        with open(ref.path / WORKER_LOG, "ab") as log_f:
            with contextlib.suppress(OSError):  # a header for people; a full disk must not stop the spawn
                log_f.write(f"\n=== attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
                log_f.flush()
            # A warm worker (trainerd.handoff) takes the job if one is idle; else a new process.
            proc = None if group else self.handoff.take(ref)
            if proc is None:
                proc = self.handoff.start(
                    [*cmd, str(ref.path), "--base-dir", str(self.layout.base)],
                    warm_jobs=1 if group else self.cfg.train.warm_jobs, env=env,
                    stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT,
                    # Own session: a terminal's Ctrl+C reaches only the daemon, which decides.
                    start_new_session=True,
                )
        # Watched from here on, whatever happens next: a worker the daemon forgot would train
        # on beside the next attempt of the same job.
        self.running = Running(ref, proc, attempt, group=group, priority=prio,
                               watch=StallWatch(ref.path, self.cfg.daemon.stall_seconds))
        self.state = DaemonState.TRAINING
        try:
            self.queue.record_worker_pid(ref, proc.pid)
        except OSError as e:  # the pid is for people; the attempt itself is already on disk
            log.warning("%s: worker pid not written to job.json (%s)", ref.id, e.strerror or e)
        log.info("%s: attempt %d started (%s pid %d)", ref.id, attempt,
                 f"torchrun group of {self.cfg.train.nproc}" if group else "worker", proc.pid,
                 extra={"attempt": attempt})

    def _published(self, ref: JobRef) -> bool:
        """Is this job already in the current model version (the worker's own retry check)?"""
        from trainerd.line.refs import published_version

        try:
            return published_version(self.layout, self.cfg, ref.meta()) is not None
        except Exception as e:  # a broken current version: the retry will say so
            log.warning("%s: could not tell whether it was published (%s)", ref.id, e)
            return False

    def _claimed_priority(self, ref: JobRef) -> Priority:
        meta = ref.meta()
        if meta.attempts and meta.attempts[-1].priority:
            return meta.attempts[-1].priority
        return meta.priority

    def _watch_worker(self, wish: control.Wish, warm: bool, cold: bool) -> None:
        r = self.running
        assert r is not None
        # The worker's report of this job (a warm worker lives on) or its exit status.
        rc = self.handoff.poll(r.proc, r.ref, keep=r.stop_sent_at is None and r.skip is None)
        if rc is None:
            skip = control.read_skip(self.layout)
            if skip is not None and skip.job_id == r.ref.id:
                r.skip = skip
            why = (attempts.COLD_STOP if cold else "stop signal" if warm else
                   wish.state.value if wish.state != Desired.RUNNING else
                   "disk low" if self.disk_pause else
                   "skip" if r.skip else None)
            if why is None and r.stop_sent_at is None:
                why = self._preemption(r)
            if r.stall is None and r.stop_sent_at is None and r.watch is not None:
                r.stall = r.watch.look()
                if r.stall:
                    log.error("%s: worker %s; stopping it, SIGKILL in %.0f s if it does not stop", r.ref.id,
                              r.stall, self.cfg.daemon.stop_grace_seconds)
                    self._event("stalled", r.ref.id, reason=r.stall)
                    r.signal(signal.SIGTERM)
                    r.stop_sent_at, r.stop_reason = time.monotonic(), attempts.STALLED
                    return
            if cold:
                log.warning("%s: second signal, killing the worker (cold stop)", r.ref.id, extra=r.log_ctx)
                r.proc.kill()
                r.stop_reason = attempts.COLD_STOP
            elif why and r.stop_sent_at is None:
                log.info("%s: asking the worker to checkpoint and stop (%s)", r.ref.id, why, extra=r.log_ctx)
                r.signal(signal.SIGTERM)
                r.stop_sent_at, r.stop_reason = time.monotonic(), why
            elif r.stop_sent_at and time.monotonic() - r.stop_sent_at > self.cfg.daemon.stop_grace_seconds:
                log.error("%s: worker did not stop within %.0fs; killing it", r.ref.id,
                          self.cfg.daemon.stop_grace_seconds, extra=r.log_ctx)
                r.proc.kill()
            return
        self._attempt_ended(r, rc)

    def _preemption(self, r: Running) -> str | None:
        """queue.preempt: the stop reason when a higher-priority job waits, else None. At
        most once a second: it lists the queue folders above the running job's."""
        if not self.cfg.queue.preempt or r.priority == Priority.HIGH:
            return None
        now = time.monotonic()
        if now - r.preempt_checked_at < 1.0:
            return None
        r.preempt_checked_at = now
        higher = self.queue.claimable_above(r.priority)
        if higher is None:
            return None
        self._event("preempting", r.ref.id, by=higher.id, priority=(higher.priority or Priority.HIGH).value)
        return attempts.PREEMPT_PREFIX + higher.id

    def _attempt_ended(self, r: Running, rc: int) -> None:
        said = r.exit_code(rc)
        outcome, error = attempts.classify(attempts.Ended(
            said=said, rc=rc, group=r.group, stall=r.stall, stop_reason=r.stop_reason,
            published=Outcome.from_exit(said) != Outcome.FINISHED and self._published(r.ref),
            worker_reason=worker_failure_reason(r.ref.path, said)))
        if outcome == Outcome.FINISHED and Outcome.from_exit(said) != Outcome.FINISHED:
            log.warning("%s: worker exit %s came after it published; the job is done", r.ref.id, said, extra=r.log_ctx)
        meta = self.queue.record_attempt_end(r.ref, outcome, said, error, self._progress(r))
        # Only now is the end on disk. Had the write failed (a full disk), the next tick sees
        # the same exit status and records it then: an attempt is never left open.
        self.running = None
        self.gpu.release()
        self._record_series(r)
        log.info("%s: attempt %d ended: %s", r.ref.id, r.attempt, describe_exit(said),
                 extra=r.log_ctx)
        action = attempts.decide(outcome, error, meta, self.cfg, skipped=r.skip is not None,
                                 skip_reason=r.skip.reason if r.skip else None)
        self._carry_out(r.ref, meta, action, r.log_ctx)

    def _progress(self, r: Running) -> Progress:
        """What the attempt got through, from the worker's files, for job.json."""
        from trainerd.status import loss_curve

        try:
            progress = atomic.read_json(r.ref.path / PROGRESS_JSON)
        except (OSError, ValueError):
            progress = None
        return Progress(progress, token_counts(r.ref.path), loss_curve(r.ref.path))

    def _record_series(self, r: Running) -> None:
        """The attempt's metrics and probe evals into state.db (history: never fatal)."""
        if self.ledger is None:
            return
        for name, record in ((METRICS, self.ledger.metrics), (EVALS, self.ledger.evals)):
            try:
                rows = []
                for line in (r.ref.path / name).read_text().splitlines():
                    with contextlib.suppress(ValueError):  # a line cut by a kill mid-write
                        rows.append(json.loads(line))
                rows = [x for x in rows if x.get("attempt") == r.attempt and "step" in x]
                record(r.ref.id, r.attempt, rows)
            except FileNotFoundError:
                pass  # no step logged, or no probe set
            except (OSError, sqlite3.Error) as e:  # history only: the outcome is recorded next
                log.warning("%s of %s not recorded in state.db: %s", name, r.ref.id, e)
