"""The daemon: one loop that converges the world to the user's wishes.

It holds the lock, takes in the inbox, claims jobs, runs each training attempt in a
worker process, records what happened, and writes a heartbeat. It never imports torch:
a worker that crashes, runs out of memory or segfaults is a job event here, never a
daemon crash. Signal handlers only set flags; the loop acts on them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from trainerd import atomic, control, guards, oplog, preflight, wishes
from trainerd.config import Config, load_config
from trainerd.control import Desired
from trainerd.gpugate import TrainingHold
from trainerd.handoff import Handoff
from trainerd.jobs import (
    EVALS,
    HEARTBEAT_JSON,
    METRICS,
    PROGRESS_JSON,
    WORKER_ERROR,
    WORKER_LOG,
    WORKER_OUTCOME,
    JobMeta,
    Outcome,
    Priority,
    child_env,
    describe_exit,
    fallback_micro_batch,
    token_counts,
)
from trainerd.ledger import Ledger, open_or_rebuild
from trainerd.lock import DaemonLock
from trainerd.paths import Layout
from trainerd.publish import Publisher
from trainerd.queue import JobRef, Queue
from trainerd.schedule import CONSOLIDATE, Housekeeping
from trainerd.server import HEARTBEAT_INTERVAL_S
from trainerd.stall import StallWatch
from trainerd.systemd import Notifier
from trainerd.tokstage import TokenStage

log = logging.getLogger("trainerd.supervisor")

LOG_TAIL_BYTES = 4000
# Exit statuses of `trainerd run` (README): 0 stopped or --once done, 2 refused to start
# (config, base_model), 3 already running, 4 --once found the daemon paused (scripts tell
# "paused" from "done").
EXIT_PAUSED = 4
PAUSED_STATES = ("paused", "paused_disk", "paused_model")


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


class Supervisor:
    def __init__(self, layout: Layout, cfg: Config, *, once: bool = False,
                 worker_cmd: list[str] | None = None):
        self.layout = layout
        self.cfg = cfg
        self.once = once
        # The worker command is fixed so a test or a wrapper (torchrun) can prefix it.
        self.worker_cmd = worker_cmd or [sys.executable, "-m", "trainerd.worker"]
        self.lock = DaemonLock(layout.lock)
        self.ledger: Ledger | None = None
        self.queue = Queue(layout, cfg.queue, on_event=self._event, data_map=cfg.data.map)
        self.stage = TokenStage(layout, self.queue)
        self.running: Running | None = None
        self.signals = 0
        self.reload_requested = False
        self.wake = threading.Event()
        self.started_at = time.time()
        self.loop_errors = 0
        self.last_error: str | None = None
        self.state = "starting"
        self.disk_pause: str | None = None  # the daemon paused itself: why
        self.disk_retry_at = 0.0
        self.disk: guards.DiskReading | None = None
        self.model = preflight.ModelGuard(layout, cfg)  # pauses when base_model disappears
        self.exit_code = 0
        self._last_status = 0.0
        self._last_written: tuple[str, bool] | None = None  # a state change is written at once
        self._observer: Any = None
        self.notify = Notifier()
        self.house = Housekeeping.from_config(layout, cfg)  # snapshots, retention, consolidation
        self._server: Any = None  # trainerd.server.ServerHandle while HTTP is up
        self.heartbeat_at = time.time()  # start of the loop's last pass (/healthz, trainerd_up)
        self._started = False  # start-up writes done (see _startup)
        self.publisher = Publisher(layout, cfg, self._event)  # [publish] hooks, on their own threads
        self.gpu = TrainingHold(layout)  # run/gpu.lock: no ad-hoc generation on the GPU while training
        self.handoff = Handoff(self.wake)  # workers' reports; a warm worker's next job (trainerd.handoff)

    # ------------------------------------------------------------ plumbing
    def _event(self, kind: str, job_id: str | None = None, **data: Any) -> None:
        if self.ledger is not None:
            try:
                self.ledger.event(kind, job_id, **data)
            except Exception as e:  # state.db is history: never let it stop training
                log.warning("state.db: could not record %s (%s)", kind, e)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Flags only (rq/huey): the loop does the work, outside the handler.
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.signals += 1
        self.wake.set()

    def _install_signals(self) -> None:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._on_signal)

    def _watch_inbox(self) -> None:
        """inotify through watchdog wakes the loop early; polling stays the fallback."""
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return
        wake = self.wake

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                wake.set()

        try:
            obs = Observer()
            obs.schedule(_Wake(), str(self.layout.inbox), recursive=True)
            obs.daemon = True
            obs.start()
            self._observer = obs
        except Exception as e:  # e.g. inotify watch limit reached: polling still works
            log.warning("inbox watching unavailable (%s); polling every %.1fs", e, self.cfg.queue.poll_seconds)

    def _start_server(self) -> None:
        """HTTP: dashboard, /metrics, /healthz, control. Training matters more than HTTP:
        an address that cannot be bound is logged and the daemon trains on without it."""
        if not self.cfg.server.enabled:
            return
        from trainerd.server import start_server

        try:
            self._server = start_server(self.layout, self.cfg.server, lambda: self.heartbeat_at,
                                        self.cfg.data.map)
        except OSError as e:
            log.error("HTTP server not started on %s:%d (%s); training goes on without it",
                      self.cfg.server.host, self.cfg.server.port, e)

    # ------------------------------------------------------------ lifecycle
    def run(self) -> int:
        """Run until stopped. Returns the process exit status (0 for a clean stop)."""
        self.layout.ensure()
        self.lock.acquire()  # AlreadyRunning propagates to the CLI
        try:
            self._install_signals()  # first: a stop during the preflight is a clean exit
            if not self._preflight():  # PreflightError propagates: the CLI exits 2 with its sentence
                log.info("stopped during the start-up check of base_model")
                return 0
            try:
                self.ledger, note = open_or_rebuild(self.layout.state_db, self.layout.jobs)
                if note:
                    log.warning("%s", note)
            except Exception as e:
                log.warning("state.db unavailable (%s); history will not be recorded", e)
            self._started = self._startup()
            self._event("daemon_start", pid=os.getpid())
            self._watch_inbox()
            self._start_server()
            log.info("trainerd running on %s (pid %d)", self.layout.base, os.getpid())
            self.notify.ready(f"running on {self.layout.base}")
            return self._loop()
        finally:
            self.stage.stop()
            self.handoff.stop()
            self.house.stop()
            self.publisher.stop()
            self.gpu.release()
            self.notify.stopping()
            if self._server is not None:
                with contextlib.suppress(Exception):
                    self._server.stop()
            if self._observer is not None:
                with contextlib.suppress(Exception):
                    self._observer.stop()
                    self._observer.join(timeout=2)
            self.state = "stopped"
            with contextlib.suppress(Exception):
                self._write_status(force=True)
            self._event("daemon_stop")
            if self.ledger is not None:
                self.ledger.close()
            self.lock.release()

    def _preflight(self) -> bool:
        """Refuse to start on a model that is not there or does not load (see preflight.py).
        False when a stop signal came first."""
        res = preflight.check(self.layout, self.cfg, cancel=lambda: bool(self.signals))
        if res.cancelled:
            return False
        for w in res.warnings:
            log.warning("preflight: %s", w)
        if not res.ok:
            raise preflight.PreflightError(f"{self.layout.config}: {res.problem}")
        log.info("preflight: %s loads (%s)", self.cfg.base_model,
                 "unchanged since the last check" if res.cached else f"checked in {res.seconds:.1f} s")
        return True

    def _startup(self) -> bool:
        """The start-up writes: a stop wish becomes "running", and recovery of what the last
        run left half-done. False when they cannot be written yet (a full disk): the loop
        retries them, and claims and takes in nothing until they are done."""
        try:
            wish = control.read_wish(self.layout)
            if wish.state == Desired.STOPPED:
                # Starting the daemon is itself the wish to run; a pause is kept (and said).
                control.set_wish(self.layout, Desired.RUNNING, "trainerd run")
                control.consume_stop_file(self.layout)
            elif wish.state == Desired.PAUSED:
                # The user's own wish, kept across restarts: news, not a problem.
                log.info("starting paused (%s); `trainerd resume` to train", wish.reason or "paused by user")
            for note in self.queue.recover():
                log.warning("recovery: %s", note)
            return True
        except OSError as e:
            log.error("start-up not finished (%s); retrying, nothing is claimed until it is", e.strerror or e)
            return False

    def _finish_startup(self) -> None:
        """A tick while start-up is unfinished: say why (a low disk pauses), try again."""
        self._check_disk()
        self._started = self._startup()
        if not self._started:
            self.state = "paused_disk" if self.disk_pause else "starting"
            with contextlib.suppress(OSError):  # the same full disk may refuse this too
                self._write_status()

    def _loop(self) -> int:
        while True:
            self.heartbeat_at = time.time()
            try:
                if self._tick():
                    return self.exit_code
                self.loop_errors = 0
            except Exception:
                # The loop survives its own bugs (fix #4 of the original daemon), with a
                # back-off so a persistent error does not spin.
                self.loop_errors += 1
                self.last_error = traceback.format_exc()
                log.error("main loop error (%d in a row):\n%s", self.loop_errors, self.last_error)
                self._event("loop_error", error=self.last_error[-2000:])
                self.state = "error"
                try:  # say so in status.json (the tick that failed did not get to write it)
                    self._write_status(force=True)
                except Exception as e:
                    log.error("status.json not written: %s", e)
                # Back off, but a signal (stop, reload) still wakes the loop at once.
                self.wake.wait(min(30.0, 0.5 * 2 ** min(self.loop_errors, 6)))
                self.wake.clear()
                continue
            self.notify.ping(self._one_line())
            self.wake.wait(self._sleep_time())
            self.wake.clear()

    def _sleep_time(self) -> float:
        # Faster while a worker runs, so a pause or stop reaches it within a step; and never
        # longer than a heartbeat, so run/status.json and /healthz stay fresh while idle.
        beat = min(self.cfg.daemon.heartbeat_seconds, HEARTBEAT_INTERVAL_S)
        return min(self.cfg.queue.poll_seconds, beat, 0.2 if self.running else beat)

    # ------------------------------------------------------------ one tick
    def _tick(self) -> bool:
        """One pass. Returns True when the daemon should exit."""
        if self.reload_requested:
            self._reload()
        if not self._started:
            self._finish_startup()
            if not self._started:
                return bool(self.signals)  # a stop signal still stops a daemon stuck here
        wish = control.read_wish(self.layout)
        warm, cold = self.signals >= 1, self.signals >= 2

        if self.queue.ingest(budget_seconds=0.5).more:
            self.wake.set()  # a big drop is taken in slices so signals and heartbeats go on
        self._check_disk()
        # The dashboard's queue and model-line edits, before a claim: a job just moved to
        # high, or removed, is claimed (or not) as the user now wants.
        wishes.carry_out(self.layout, self.queue, self._event)
        self.publisher.tick()  # reads the current pointer; hooks run on threads, never here

        if self.running is not None:
            self._watch_worker(wish, warm, cold)
        # The stage works while the GPU is busy, or paused by the user (files still arrive):
        # their verdicts are known before the resume, not at each job's turn.
        self.stage.tick(training=(self.running is not None or wish.state == Desired.PAUSED) and not warm)
        # Housework runs in its own processes: the daily snapshot + retention at any time,
        # consolidation only when nothing is queued or active, and then no job is claimed.
        housework = self.house.tick(idle=self.running is None and self._idle(),
                                    allowed=wish.state == Desired.RUNNING and not warm and not self.disk_pause)
        if self.running is None:
            skip = control.read_skip(self.layout)
            if skip is not None:
                self._apply_idle_skip(skip)
            if warm or wish.state == Desired.STOPPED:
                if wish.state == Desired.STOPPED:
                    control.consume_stop_file(self.layout)
                log.info("stopping: %s", "signal" if warm else (wish.reason or "stop requested"))
                return True
            if wish.state == Desired.PAUSED:
                self.state = "paused"
            elif self.disk_pause:
                self.state = "paused_disk"
            else:
                if housework != CONSOLIDATE:
                    self.stage.stop()  # the GPU is free: the next job's worker goes first
                ref = None if housework == CONSOLIDATE else self._claim()
                if ref is not None and not self.model.ready():
                    # base_model went away: the job waits in active/ and no attempt is burnt on it.
                    self.gpu.release()
                    self.state = "paused_model"
                elif ref is not None:
                    self._spawn(ref)
                elif self.once and self._idle() and housework is None:
                    log.info("queue empty; exiting (--once)")
                    return True
                else:
                    self.state = "consolidating" if housework == CONSOLIDATE else "idle"
            if self.once and self.state in PAUSED_STATES and self.queue.pending_inbox() == 0:
                # Waiting for a resume would never end for a script: say so and exit non-zero.
                log.warning("paused (%s); exiting with status %d (--once)", self._pause_reason(), EXIT_PAUSED)
                self.exit_code = EXIT_PAUSED
                return True
        self.handoff.settle(busy=self.running is not None)  # a warm worker not handed a job now goes
        self._write_status()
        return False

    def _pause_reason(self) -> str:
        wish = control.read_wish(self.layout)
        if wish.state == Desired.PAUSED:
            return wish.reason or "paused by user; `trainerd resume` to train"
        return self.disk_pause or self.model.pause or "paused"

    def _idle(self) -> bool:
        c = self.queue.counts()
        return c["queued"] == 0 and c["active"] == 0 and self.queue.pending_inbox() == 0

    def _reload(self) -> None:
        self.reload_requested = False
        try:
            new = load_config(self.layout.config)
        except Exception as e:
            log.error("SIGHUP: config not reloaded, the running config stays: %s", e)
            return
        finally:
            oplog.reopen()  # after logrotate moved the file away (the config aside)
        restart_keys = [k for k in ("base_model",) if getattr(new, k) != getattr(self.cfg, k)]
        checked = preflight.check(self.layout, new)
        if not checked.ok and restart_keys:
            log.error("SIGHUP: config not reloaded, the running config stays: %s", checked.problem)
            return
        self.cfg = new
        self.model = preflight.ModelGuard(self.layout, new)
        if not checked.ok:  # the same base_model, gone or broken since the start: pause, say why
            self.model.set_pause(checked.problem)
        self.queue.cfg = new.queue
        self.queue.data_map = new.data.map
        self.house.configure(new.schedule, new.consolidate)
        self.publisher.configure(new)
        log.info("SIGHUP: config reloaded; [train] and [checkpoint] apply from the next attempt")
        if restart_keys:
            log.warning("SIGHUP: %s changed; it applies to the next job's model load", ", ".join(restart_keys))

    # ------------------------------------------------------------ workers
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
        self.running = Running(ref, proc, attempt, group=group,
                               watch=StallWatch(ref.path, self.cfg.daemon.stall_seconds))
        self.state = "training"
        meta.attempts[-1].pid = proc.pid
        try:
            meta.save(ref.path)
        except OSError as e:  # the pid is for people; the attempt itself is already on disk
            log.warning("%s: worker pid not written to job.json (%s)", ref.id, e.strerror or e)
        log.info("%s: attempt %d started (%s pid %d)", ref.id, attempt,
                 f"torchrun group of {self.cfg.train.nproc}" if group else "worker", proc.pid,
                 extra={"attempt": attempt})

    def _published(self, ref: JobRef) -> bool:
        """Is this job already in the current model version (the worker's own retry check)?"""
        from trainerd.worker.models import published_version  # torch-free at import

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
            why = ("cold stop" if cold else "stop signal" if warm else
                   wish.state.value if wish.state != Desired.RUNNING else
                   "disk low" if self.disk_pause else
                   "skip" if r.skip else None)
            if r.stall is None and r.stop_sent_at is None and r.watch is not None:
                r.stall = r.watch.look()
                if r.stall:
                    log.error("%s: worker %s; stopping it, SIGKILL in %.0f s if it does not stop", r.ref.id,
                              r.stall, self.cfg.daemon.stop_grace_seconds)
                    self._event("stalled", r.ref.id, reason=r.stall)
                    r.signal(signal.SIGTERM)
                    r.stop_sent_at, r.stop_reason = time.monotonic(), "stalled"
                    return
            if cold:
                log.warning("%s: second signal, killing the worker (cold stop)", r.ref.id, extra=r.log_ctx)
                r.proc.kill()
                r.stop_reason = "cold stop"
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

    def _attempt_ended(self, r: Running, rc: int) -> None:
        said = r.exit_code(rc)
        outcome = Outcome.from_exit(said)
        error = None
        if r.stall and outcome not in (Outcome.FINISHED, Outcome.MODEL_UNAVAILABLE):
            # Counted whatever the worker did when asked to stop: a stopped checkpoint only
            # means the hang ended by itself; the next attempt resumes from the newest one.
            outcome, error = Outcome.STALLED, f"{r.stall}; then {describe_exit(said)}"
        elif r.stop_reason == "cold stop" and outcome != Outcome.FINISHED:
            outcome, error = Outcome.STOPPED, "cold stop: worker killed without a checkpoint"
        elif r.stop_reason and (rc == -signal.SIGTERM or (r.group and said == rc and rc != 0)):
            # Our stop request landed before the worker had installed its handler (it was
            # still starting): nothing was trained since the last checkpoint; not a crash.
            outcome, error = Outcome.STOPPED, "stopped while the worker was starting"
        elif outcome not in (Outcome.FINISHED, Outcome.STOPPED):
            error = worker_failure_reason(r.ref.path, said)
        if outcome != Outcome.FINISHED and self._published(r.ref):
            # The worker published, then died on its way out (a stop or skip signal landing
            # during its exit, a kill): the job is in the model line, so it is done. Failing
            # it (a skip) would leave trained data in failed/, and a requeue would train it twice.
            log.warning("%s: worker exit %s came after it published; the job is done", r.ref.id, said, extra=r.log_ctx)
            outcome, error = Outcome.FINISHED, f"published, then {describe_exit(said)}"
        meta = self.queue.record_attempt_end(r.ref, outcome, said, error)
        # Only now is the end on disk. Had the write failed (a full disk), the next tick sees
        # the same exit status and records it then: an attempt is never left open.
        self.running = None
        self.gpu.release()
        self._absorb_progress(r, meta)
        log.info("%s: attempt %d ended: %s", r.ref.id, r.attempt, describe_exit(said),
                 extra=r.log_ctx)

        if outcome == Outcome.FINISHED:
            if r.skip is not None:
                control.clear_skip(self.layout)  # it finished first; the skip has no target left
            self._record_gate(r.ref, meta)
            self._record_publish(r, meta)
            self.queue.finish(r.ref)
            return
        if r.skip is not None:
            control.clear_skip(self.layout)
            meta.history.append({"at": time.time(), "event": "skipped", "reason": r.skip.reason})
            meta.save(r.ref.path)
            self.queue.fail(r.ref, "skipped by user" + (f": {r.skip.reason}" if r.skip.reason else ""),
                            stage="skip", resumable=True)
            return
        if outcome == Outcome.STOPPED:
            return  # stays in active/ with its checkpoint; resumed first next time
        if outcome == Outcome.DISK_LOW:
            self._pause_for_disk(error or "disk full")
            return  # stays in active/; resumes from its last checkpoint when space returns
        if outcome == Outcome.MODEL_UNAVAILABLE:
            self.model.set_pause(error or "the model cannot be loaded")
            return  # stays in active/; resumes when the model is back (checked every 30 s, SIGHUP)
        if outcome == Outcome.RESOURCE_ERROR:
            self._oom_fallback(r.ref, meta, error)
            return
        if outcome == Outcome.NONFINITE:
            meta.nonfinite_events += 1
            meta.save(r.ref.path)
            if meta.nonfinite_events >= 2:
                self.queue.fail(r.ref, f"training diverged twice on the same data: {error}", stage="training")
            else:
                log.warning("%s: %s; retrying once from the last good checkpoint", r.ref.id, error, extra=r.log_ctx)
            return
        if outcome == Outcome.DATA_ERROR:
            # The file's fault, not the daemon's: a WARNING someone should read, not an ERROR.
            log.warning("%s: data error, sent to failed/: %s", r.ref.id, error, extra=r.log_ctx)
            self.queue.fail(r.ref, error or "data error", stage="training", attempts=len(meta.attempts))
            return
        failed = meta.failed_attempts
        if failed >= self.cfg.queue.max_attempts:
            self.queue.fail(r.ref, f"gave up after {failed} failed attempt(s); last: {error}",
                            stage="training", attempts=len(meta.attempts))
        else:
            delay = self.cfg.queue.backoff_after(meta.own_failures)  # a daemon death earns none
            log.warning("%s: attempt failed (%s); retry %d/%d in %.0fs", r.ref.id, error,
                        failed, self.cfg.queue.max_attempts - 1, delay, extra=r.log_ctx)
            self.queue.release(r.ref, meta, time.time() + delay)

    def _record_publish(self, r: Running, meta: JobMeta) -> None:
        """The publish line in the log and the ledger's `trained` event: what the /metrics
        counters and the duration histogram sum, kept after the job is removed."""
        from trainerd.history import TRAINED_EVENT, trained_event
        from trainerd.worker.models import published_version  # torch-free at import

        try:
            version = published_version(self.layout, self.cfg, meta)
        except Exception:  # a broken current version: the line says "?"
            version = None
        facts = trained_event(meta, version)
        self._event(TRAINED_EVENT, r.ref.id, **facts)
        line = oplog.publish_line(r.ref.id, meta.original_name, facts, oplog.final_probe(r.ref.path, r.attempt))
        log.info("%s", line, extra={"job_id": r.ref.id, "attempt": r.attempt, "version": version})

    def _record_gate(self, ref: JobRef, meta: JobMeta) -> None:
        """The version the job published and the eval gate's decision, into job.json and
        state.db (the version's manifest holds the original)."""
        from trainerd.forgetting import version_of_job

        found = version_of_job(self.layout, ref.id)
        if found is None:
            return
        meta.version, meta.gate = found[0], found[1].get("gate")
        with contextlib.suppress(OSError):  # history for people; the version itself is on disk
            meta.save(ref.path)
        if meta.gate:
            log.log(logging.WARNING if meta.gate.get("action") != "current" else logging.INFO,
                    "%s: %s %s", ref.id, found[0], meta.gate.get("verdict"))
            self._event("gate", ref.id, version=found[0], **meta.gate)

    def _oom_fallback(self, ref: JobRef, meta: JobMeta, error: str | None) -> None:
        """Out of memory: same effective batch in smaller micro-batches, from the last
        checkpoint; give up with a clear reason once the micro-batch is 1."""
        t = self.cfg.train
        current = meta.micro_batch_size or t.micro_batch_size
        nxt = fallback_micro_batch(t.micro_batch_size * t.grad_accum, current)
        if nxt is None:
            self.queue.fail(ref, f"out of memory even at micro-batch 1: {error}. Lower train.max_seq_len, "
                            "use LoRA instead of full fine-tuning, or a machine with more memory",
                            stage="training")
            return
        meta.micro_batch_size = nxt
        meta.history.append({"at": time.time(), "event": "oom_fallback", "micro_batch_size": nxt})
        meta.save(ref.path)
        log.warning("%s: out of memory at micro-batch %d; retrying at %d (%s)", ref.id, current, nxt, error)

    def _check_disk(self) -> None:
        ckpt = 0
        if self.running is not None:
            try:
                ckpt = int(atomic.read_json(self.running.ref.path / PROGRESS_JSON).get("last_checkpoint_bytes") or 0)
            except (OSError, ValueError):
                pass
        self.disk = r = guards.reading(self.layout.base, self.cfg.disk, ckpt)
        if r.low:
            if not self.disk_pause:
                self._pause_for_disk(r.message())
        elif self.disk_pause and time.monotonic() >= self.disk_retry_at:
            log.warning("disk: %d MB free again; resuming", r.free // guards.MB)
            self._event("disk_resume", free=r.free)
            self.disk_pause = None

    def _pause_for_disk(self, why: str) -> None:
        if self.disk_pause is None:
            log.error("pausing: %s", why)
            self._event("disk_pause", reason=why)
        self.disk_pause = why
        # The worker saw the disk fill up even if the reading says fine now (a burst, a
        # quota): wait a little before trying again rather than flapping.
        self.disk_retry_at = time.monotonic() + 10.0

    def _absorb_progress(self, r: Running, meta: JobMeta) -> None:
        """Copy the worker's last progress into job.json, its metrics and probe evals into state.db."""
        try:
            p = atomic.read_json(r.ref.path / PROGRESS_JSON)
            meta.examples_done = int(p.get("examples_done", meta.examples_done))
            meta.steps_done = int(p.get("step", meta.steps_done))
            meta.save(r.ref.path)
        except (OSError, ValueError):
            pass
        counts = token_counts(r.ref.path)
        if counts:  # what train.overlength did, for job.json, status and the dashboard
            meta.sequences, meta.tokens = counts["sequences"], counts["tokens"]
            meta.dropped, meta.truncated = counts["dropped"], counts["truncated"]
            with contextlib.suppress(OSError):
                meta.save(r.ref.path)
        from trainerd.status import loss_curve

        curve = loss_curve(r.ref.path)
        if curve:
            meta.first_loss, meta.last_loss = curve[0], curve[-1]
            meta.save(r.ref.path)
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

    def _apply_idle_skip(self, skip: control.Skip) -> None:
        """A skip for a job sitting in active/ with no worker (paused or stopped)."""
        for ref in self.queue.list():
            if ref.id == skip.job_id and ref.state.value == "active":
                self.queue.fail(ref, "skipped by user" + (f": {skip.reason}" if skip.reason else ""),
                                stage="skip", resumable=True)
                break
        control.clear_skip(self.layout)  # a skip never outlives its job's activity

    # ------------------------------------------------------------ status
    def _one_line(self) -> str:
        job = f" {self.running.ref.id}" if self.running else ""
        return f"{self.state}{job}; {self.queue.counts()['queued']} queued"

    def _write_status(self, force: bool = False) -> None:
        now = time.time()
        changed = (self.state, self.running is not None) != self._last_written
        if not (force or changed) and now - self._last_status < self.cfg.daemon.heartbeat_seconds:
            return
        self._last_status, self._last_written = now, (self.state, self.running is not None)
        wish = control.read_wish(self.layout)
        status: dict[str, Any] = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "heartbeat_at": now,
            "heartbeat_seconds": self.cfg.daemon.heartbeat_seconds,
            "state": self.state,
            "desired": wish.state.value,
            "desired_reason": wish.reason,
            "queue": self.queue.counts(),
            "disk": None if self.disk is None else {
                "free_bytes": self.disk.free, "pause_below_bytes": self.disk.pause_below,
                "low": self.disk.low, "warn": self.disk.warn},
            "paused_reason": self.disk_pause or self.model.pause,
            "inbox": self.queue.inbox_report(),
            "housework": self.house.running,
            "publish": self.publisher.status(),
            "loop_errors": self.loop_errors,
            "last_error": (self.last_error or "")[-1000:] or None,
            "job": None,
        }
        if self.running is not None:
            r = self.running
            status["job"] = {"id": r.ref.id, "attempt": r.attempt, "pid": r.proc.pid, "stopping": r.stop_reason,
                             "phase": r.watch.phase if r.watch else None, "step": r.watch.step if r.watch else None,
                             "stall": r.stall}
        atomic.write_json(self.layout.status, status)


def run_daemon(base_dir: Path, *, once: bool = False) -> int:
    layout = Layout.at(base_dir)
    cfg = load_config(layout.config)
    return Supervisor(layout, cfg, once=once).run()
