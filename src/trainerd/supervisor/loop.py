"""The daemon: one loop that converges the world to the user's wishes.

It holds the lock, takes in the inbox, claims jobs, runs each training attempt in a
worker process, records what happened, and writes a heartbeat. It never imports torch:
a worker that crashes, runs out of memory or segfaults is a job event here, never a
daemon crash. Signal handlers only set flags; the loop acts on them."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainerd import control, eventspool, guards, oplog, preflight, wishes
from trainerd.config import Config, DataMapConfig, ServerConfig, load_config
from trainerd.control import Desired
from trainerd.gpugate import TrainingHold
from trainerd.handoff import Handoff
from trainerd.ledger import Ledger, open_or_rebuild
from trainerd.lock import DaemonLock
from trainerd.paths import Layout
from trainerd.publish import Publisher
from trainerd.queue import Queue
from trainerd.schedule import CONSOLIDATE, Housekeeping
from trainerd.state import HEARTBEAT_INTERVAL_S, DaemonState
from trainerd.supervisor.actions import Actions
from trainerd.supervisor.report import Report
from trainerd.supervisor.running import Running
from trainerd.supervisor.workers import Workers
from trainerd.systemd import Notifier
from trainerd.tokstage import TokenStage

log = logging.getLogger("trainerd.supervisor")

# Exit statuses of `trainerd run` (README): 0 stopped or --once done, 2 refused to start
# (config, base_model), 3 already running, 4 --once found the daemon paused (scripts tell
# "paused" from "done").
EXIT_PAUSED = 4

# Starts HTTP (trainerd.web.server.start_server's signature): the web is a face, so
# `trainerd run` hands it to the daemon, which never imports trainerd.web itself.
StartWeb = Callable[[Layout, ServerConfig, Callable[[], float], DataMapConfig | None], Any]


class Supervisor(Workers, Actions, Report):
    def __init__(self, layout: Layout, cfg: Config, *, once: bool = False,
                 worker_cmd: list[str] | None = None, start_web: StartWeb | None = None):
        self.layout = layout
        self.start_web = start_web  # None: no HTTP (a test's supervisor, or no web face)
        self.cfg = cfg
        self.once = once
        self.work_done = False  # --once ended on an empty queue (not a signal or a stop)
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
        self.state = DaemonState.STARTING
        self.disk_pause: str | None = None  # the daemon paused itself: why
        self.disk_retry_at = 0.0
        self.disk: guards.DiskReading | None = None
        self.model = preflight.ModelGuard(layout, cfg)  # pauses when base_model disappears
        self.exit_code = 0
        self._last_status = 0.0
        self._last_written: tuple[DaemonState, bool] | None = None  # a state change is written at once
        self._observer: Any = None
        self.notify = Notifier()
        self.house = Housekeeping.from_config(layout, cfg)  # snapshots, retention, consolidation
        self._server: Any = None  # trainerd.web.server.ServerHandle while HTTP is up
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
        if not self.cfg.server.enabled or self.start_web is None:
            return
        try:
            self._server = self.start_web(self.layout, self.cfg.server, lambda: self.heartbeat_at,
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
            self.publisher.stop(retries=self.work_done)
            self.gpu.release()
            self.notify.stopping()
            if self._server is not None:
                with contextlib.suppress(Exception):
                    self._server.stop()
            if self._observer is not None:
                with contextlib.suppress(Exception):
                    self._observer.stop()
                    self._observer.join(timeout=2)
            self.state = DaemonState.STOPPED
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
            self._recover_interrupted()
            return True
        except OSError as e:
            log.error("start-up not finished (%s); retrying, nothing is claimed until it is", e.strerror or e)
            return False

    def _finish_startup(self) -> None:
        """A tick while start-up is unfinished: say why (a low disk pauses), try again."""
        self._check_disk()
        self._started = self._startup()
        if not self._started:
            self.state = DaemonState.PAUSED_DISK if self.disk_pause else DaemonState.STARTING
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
                self.state = DaemonState.ERROR
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
        eventspool.drain(self.layout, self._event)  # uploads' intake events (trainerd.web)
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
                self.state = DaemonState.PAUSED
            elif self.disk_pause:
                self.state = DaemonState.PAUSED_DISK
            else:
                if housework != CONSOLIDATE:
                    self.stage.stop()  # the GPU is free: the next job's worker goes first
                ref = None if housework == CONSOLIDATE else self._claim()
                if ref is not None and not self.model.ready():
                    # base_model went away: the job waits in active/ and no attempt is burnt on it.
                    self.gpu.release()
                    self.state = DaemonState.PAUSED_MODEL
                elif ref is not None:
                    self._spawn(ref)
                elif self.once and self._idle() and housework is None:
                    log.info("queue empty; exiting (--once)")
                    self.work_done = True  # publish hooks may finish their retries
                    return True
                else:
                    self.state = DaemonState.CONSOLIDATING if housework == CONSOLIDATE else DaemonState.IDLE
            if self.once and self.state.paused and self.queue.pending_inbox() == 0:
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


def run_daemon(base_dir: Path, *, once: bool = False, start_web: StartWeb | None = None) -> int:
    layout = Layout.at(base_dir)
    cfg = load_config(layout.config)
    return Supervisor(layout, cfg, once=once, start_web=start_web).run()
