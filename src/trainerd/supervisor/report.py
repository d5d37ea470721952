"""The daemon's own account in run/status.json (what `trainerd status`, watch, /healthz and
the dashboard read), the systemd status line, and the disk guard that pauses training
when free space runs low.

A mixin of Supervisor (trainerd.supervisor.loop): it shares the supervisor's attributes."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from trainerd import atomic, control, guards
from trainerd.jobs import PROGRESS_JSON

log = logging.getLogger("trainerd.supervisor")


class Report:
    def _one_line(self) -> str:
        job = f" {self.running.ref.id}" if self.running else ""
        return f"{self.state.value}{job}; {self.queue.counts()['queued']} queued"

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
            "state": self.state.value,
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
