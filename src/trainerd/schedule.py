"""When the daemon's housework runs: the daily snapshot + retention, and consolidation.

Daily work runs once per calendar day at a configured local time. "Done" is a persisted
marker (run/schedule.json, written atomically), so a restart does not run it again and a
day missed while the daemon was down runs at the next start. The wall clock alone cannot
be trusted across NTP steps or a wrong RTC, so real time (CLOCK_BOOTTIME: it survives
daemon restarts and counts suspend) is recorded with each run, and within one boot:

- two runs are at least `min_gap_hours` (default 20) of real time apart, so a clock that
  jumps forward cannot run the work twice in a real day;
- if the last run is dated in the future (the clock went back), it runs again once 24 h
  of real time have passed, instead of waiting for the calendar to catch up.
After a reboot real time is unknown; a marker from the future is then counted as
today's, so the work runs at the next scheduled time of the calendar the machine has.

Consolidation runs only when nothing is queued or active (fix #8 of the original daemon),
daily at a time and/or after N jobs published since the last full version. Each task runs
in its own process; the supervisor only calls `Housekeeping.tick()`.

Its config sections ([schedule], [consolidate]) are in trainerd.config with the others.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.config import ConsolidateConfig, ScheduleConfig, parse_at
from trainerd.jobs import ExitCode, child_env, describe_exit
from trainerd.line.versions import Line, current_name, line_state
from trainerd.paths import Layout

log = logging.getLogger("trainerd.schedule")

SCHEDULE_JSON = "schedule.json"
DAILY = "daily"  # snapshot, then retention
CONSOLIDATE = "consolidate"
RETRY_AFTER_FAILURE_S = 15 * 60  # a failed task is not retried in a tight loop
DAY = 24 * 3600.0


# ------------------------------------------------------------------ clocks
def boottime() -> float:
    """Seconds since boot, suspend included; the same across daemon restarts."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""  # unknown: every start counts as a new boot (only the wall clock is used)


def local_now() -> dt.datetime:
    return dt.datetime.now().astimezone()


@dataclass
class Clock:
    """Injectable for tests: wall time (local), a boot-relative monotonic clock, the boot."""

    now: Callable[[], dt.datetime] = local_now
    mono: Callable[[], float] = boottime
    boot: Callable[[], str] = boot_id


@dataclass(frozen=True)
class Stamp:
    """When a task started (it is marked done for the day it *started* on)."""

    wall: dt.datetime
    mono: float
    boot: str


class Schedule:
    """Persisted "last done" markers in run/schedule.json and the due rule."""

    def __init__(self, path: Path, clock: Clock | None = None, min_gap_hours: float = 20):
        self.path = Path(path)
        self.clock = clock or Clock()
        self.min_gap = min_gap_hours * 3600

    def _load(self) -> dict[str, Any]:
        try:
            data = atomic.read_json(self.path)
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("%s unreadable (%s); daily work may run once more", self.path, e)
            return {}

    def info(self, task: str) -> dict[str, Any]:
        return dict(self._load().get(task) or {})

    def stamp(self) -> Stamp:
        return Stamp(self.clock.now(), self.clock.mono(), self.clock.boot())

    def due(self, task: str, at: dt.time) -> bool:
        now = self.clock.now()
        today = now.date()
        rec = self.info(task)
        try:
            last = dt.date.fromisoformat(rec["ran_on"])
        except (KeyError, TypeError, ValueError):
            return now.time() >= at  # never ran: today's time decides
        same_boot = bool(rec.get("boot")) and rec.get("boot") == self.clock.boot() \
            and isinstance(rec.get("mono"), (int, float))
        real = self.clock.mono() - rec["mono"] if same_boot else None
        if real is not None and real < self.min_gap:
            return False  # whatever the wall clock says: it may have jumped forward
        if last > today:  # the last run is "in the future": the clock went back
            if real is not None:
                return real >= DAY  # real time still counts days
            # After a reboot real time is unknown: count the marker as today's, so the
            # work runs at the next scheduled time on this calendar, not a year from now.
            log.warning("%s last ran on %s, after today (%s): the clock went back; next run at "
                        "the next %s", task, last, today, at.strftime("%H:%M"))
            self.note(task, ran_on=today.isoformat(), clock_went_back_from=last.isoformat())
            return False
        if last == today:
            return False
        # Yesterday's ran: wait for today's time. Two or more days ago: a day was missed
        # (the daemon was down), so run now.
        yesterday = today - dt.timedelta(days=1)
        return last < yesterday or now.time() >= at

    def mark(self, task: str, started: Stamp, **extra: Any) -> None:
        data = self._load()
        data[task] = {**(data.get(task) or {}), "ran_on": started.wall.date().isoformat(),
                      "ran_at": started.wall.isoformat(), "mono": started.mono, "boot": started.boot,
                      **extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.path, data)

    def note(self, task: str, **extra: Any) -> None:
        """Persist extra facts about a task without marking it done."""
        data = self._load()
        data[task] = {**(data.get(task) or {}), **extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.path, data)


# ------------------------------------------------------------------ consolidation policy
def consolidation_reason(sched: Schedule, cfg: ConsolidateConfig, line: Line, idle: bool) -> str | None:
    """Why consolidation should start now, or None. Never while anything is queued or
    active; never for a version whose consolidation already failed."""
    if not idle or line.kind != "adapter" or line.version is None:
        return None
    if sched.info(CONSOLIDATE).get("failed_version") == line.version:
        return None
    if cfg.every_jobs and line.jobs_since_full >= cfg.every_jobs:
        return f"{line.jobs_since_full} job(s) since the last full version (every_jobs = {cfg.every_jobs})"
    at = parse_at(cfg.at)
    if at is not None and sched.due(CONSOLIDATE, at):
        return f"daily at {cfg.at}"
    return None


# ------------------------------------------------------------------ the supervisor's hook
@dataclass
class _Child:
    task: str
    proc: subprocess.Popen
    started: Stamp
    key: str  # the day (daily) or the version (consolidate) it works on
    t0: float = field(default_factory=time.monotonic)
    asked_to_stop: bool = False


class Housekeeping:
    """Starts and watches the housework processes; at most one at a time.

    The daily task (snapshot + retention) copies and deletes immutable version folders, so
    it may run while a job trains. Consolidation replaces the current model, so it starts
    only when idle, and while it runs `tick` says so and the supervisor claims no job.
    """

    def __init__(self, layout: Layout, schedule: ScheduleConfig | None = None,
                 consolidate: ConsolidateConfig | None = None, *, clock: Clock | None = None,
                 python: str = sys.executable):
        self.layout = layout
        self.python = python
        self.child: _Child | None = None
        self.retry_at: dict[str, float] = {}
        self._line_cache: tuple[str | None, Line] | None = None
        self.clock = clock or Clock()
        self.configure(schedule or ScheduleConfig(), consolidate or ConsolidateConfig())

    @classmethod
    def from_config(cls, layout: Layout, cfg: Any, **kw: Any) -> Housekeeping:
        return cls(layout, cfg.schedule, cfg.consolidate, **kw)

    def configure(self, schedule: ScheduleConfig, consolidate: ConsolidateConfig) -> None:
        """(Re)load settings, e.g. on SIGHUP; a running task is left alone."""
        self.cfg, self.ccfg = schedule, consolidate
        self.sched = Schedule(self.layout.run / SCHEDULE_JSON, self.clock, schedule.min_gap_hours)

    @property
    def running(self) -> str | None:
        return self.child.task if self.child else None

    def tick(self, *, idle: bool, allowed: bool = True) -> str | None:
        """Call on every supervisor tick. `idle`: nothing queued, active or in the inbox
        (the daemon's queue knows; the consolidation process never looks at it).
        `allowed`: the daemon wants to run (not paused, stopping or short of disk).
        Returns the task running now ("daily" or "consolidate"); while it is
        "consolidate" the supervisor must not claim a job."""
        c = self.child
        if c is not None:
            rc = c.proc.poll()
            if rc is None:
                if (not allowed or not idle) and c.task == CONSOLIDATE and not c.asked_to_stop:
                    # Paused, stopping, or work arrived (fix #8: never merge under a job):
                    # the merge gives way. Stopped, it changes nothing and runs again when
                    # idle; a merge finished under waiting jobs would not become current
                    # anyway. A snapshot just finishes.
                    log.info("asking consolidation (pid %d) to stop: %s", c.proc.pid,
                             "work is waiting" if allowed else "paused or stopping")
                    c.proc.send_signal(signal.SIGTERM)
                    c.asked_to_stop = True
                return c.task
            self._ended(c, rc)
            self.child = None
        if not allowed:
            return None
        mono = time.monotonic()
        at = parse_at(self.cfg.snapshot_at)
        if at is not None and mono >= self.retry_at.get(DAILY, 0) and self.sched.due(DAILY, at):
            self._start_daily()
            if self.child is not None:
                return self.child.task
        if mono >= self.retry_at.get(CONSOLIDATE, 0) and (self.ccfg.every_jobs or self.ccfg.at != "off"):
            line = self._line()
            why = consolidation_reason(self.sched, self.ccfg, line, idle)
            if why:
                log.info("consolidating %s: %s", line.version, why)
                self._spawn(CONSOLIDATE, [self.python, "-m", "trainerd.worker.consolidate",
                                          "--base-dir", str(self.layout.base)], key=line.version or "")
                return CONSOLIDATE
        return None

    def _line(self) -> Line:
        """The line's state, re-read only when `current` changes (a long adapter chain is
        many manifests, and this runs on every idle tick)."""
        key = current_name(self.layout)
        if self._line_cache is None or self._line_cache[0] != key:
            self._line_cache = (key, line_state(self.layout))
        return self._line_cache[1]

    def _start_daily(self) -> None:
        started = self.sched.stamp()
        day = started.wall.date().isoformat()
        if current_name(self.layout) is None:
            # No model version yet: nothing to copy or to prune; today counts as done.
            self.sched.mark(DAILY, started, result="no model version yet")
            return
        self._spawn(DAILY, [self.python, "-m", "trainerd.line.daily",
                            "--base-dir", str(self.layout.base), "--date", day], key=day, started=started)

    def _spawn(self, task: str, cmd: list[str], key: str, started: Stamp | None = None) -> None:
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        env = child_env()
        with open(self.layout.logs / f"{task}.log", "ab") as f:
            f.write(f"\n=== {task} {key} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
            f.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        self.child = _Child(task, proc, started or self.sched.stamp(), key)
        log.info("%s started (pid %d)", task, proc.pid)

    def _ended(self, c: _Child, rc: int) -> None:
        took = time.monotonic() - c.t0
        if rc == 0:
            log.info("%s %s finished in %.0fs", c.task, c.key, took)
            self.sched.mark(c.task, c.started, result="ok", key=c.key)
            return
        tail = _tail(self.layout.logs / f"{c.task}.log")
        # Asked to stop before its handler was in place, it died of the signal: stopped too.
        stopped = rc == ExitCode.STOPPED or (c.asked_to_stop and rc == -signal.SIGTERM)
        if c.task == CONSOLIDATE and stopped:
            log.info("consolidation of %s stopped or deferred (%s); will try again when idle", c.key, tail)
            self.retry_at[c.task] = time.monotonic() + 60
            return
        log.error("%s %s failed (%s) after %.0fs: %s", c.task, c.key, describe_exit(rc), took, tail)
        if c.task == CONSOLIDATE:
            # A rejected or crashed merge of this version is not retried; a new version is.
            self.sched.note(CONSOLIDATE, failed_version=c.key, failed_exit=rc)
        self.retry_at[c.task] = time.monotonic() + RETRY_AFTER_FAILURE_S

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the running task to stop (it cleans up its temp files) and wait for it."""
        c = self.child
        if c is None:
            return
        if c.proc.poll() is None:
            log.info("stopping %s (pid %d)", c.task, c.proc.pid)
            c.proc.send_signal(signal.SIGTERM)
            try:
                c.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
        if c.proc.returncode == 0:
            self._ended(c, 0)  # it finished just before we asked
        else:  # not marked done: it runs again at the next start
            log.info("%s %s interrupted (%s)", c.task, c.key, c.proc.returncode)
        self.child = None


def _tail(path: Path, nbytes: int = 600) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - nbytes))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
        return " | ".join(lines[-3:])
    except OSError:
        return ""
