"""The worker's side of the anti-stuck monitor (trainerd.stall): phase, step, beats.

A thread rewrites heartbeat.json every few seconds. Its `beats` count moves only when
the worker really progressed since the last write: the main thread reported a step, an
eval example or a new phase, or, in the phases that are one long library call (loading,
tokenizing, checkpointing, publishing), the main thread used CPU or the process read
from the disk.
A thread that beat unconditionally would hide a hang; one that beat only on steps would
call a 20-minute model load from a slow disk a stall. A frozen process writes nothing.

Only rank 0 of a group reports (the daemon watches one file per job). Torch-free.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from trainerd import atomic
from trainerd.jobs import HEARTBEAT_JSON

log = logging.getLogger("trainerd.worker.heartbeat")

INTERVAL_ENV = "TRAINERD_HEARTBEAT_SECONDS"  # set by the daemon from daemon.heartbeat_seconds
BUSY_PHASES = ("loading", "tokenizing", "checkpointing", "publishing")


class Heartbeat:
    def __init__(self, job_dir: Path, interval: float):
        self.path = job_dir / HEARTBEAT_JSON
        self.interval = interval
        self.phase = "loading"
        self.step = 0
        self.beats = 0
        self._progress = 0  # bumped by the main thread; read by the beating thread
        self._seen_progress = -1
        self._work = (-1.0, -1)
        self._entered = time.monotonic()
        self.phase_seconds: dict[str, float] = {}
        self._main_tid = threading.main_thread().native_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def enter(self, phase: str, step: int | None = None) -> None:
        if phase != self.phase:
            now = time.monotonic()
            self.phase_seconds[self.phase] = self.phase_seconds.get(self.phase, 0.0) + now - self._entered
            self.phase, self._entered = phase, now
        self.progress(step)

    def progress(self, step: int | None = None) -> None:
        if step is not None:
            self.step = step
        self._progress += 1

    def _main_thread_work(self) -> tuple[float, int]:
        """(CPU seconds of the main thread, bytes the process read from storage). Not bytes
        written: this thread's own heartbeat writes would count, and beat forever."""
        import psutil

        p = psutil.Process()
        cpu = next((t.user_time + t.system_time for t in p.threads() if t.id == self._main_tid), 0.0)
        try:
            read = p.io_counters().read_bytes
        except (psutil.Error, AttributeError, OSError):
            read = 0
        return cpu, read

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._beat()
            except Exception as e:  # a heartbeat must never take the worker down
                log.debug("heartbeat not written: %s", e)
            self._stop.wait(self.interval)

    def _beat(self) -> None:
        moved = self._progress != self._seen_progress
        self._seen_progress = self._progress
        if self.phase in BUSY_PHASES:
            work = self._main_thread_work()
            moved = moved or work != self._work
            self._work = work
        if moved:
            self.beats += 1
        spent = dict(self.phase_seconds)
        spent[self.phase] = spent.get(self.phase, 0.0) + time.monotonic() - self._entered
        atomic.write_json(self.path, {"pid": os.getpid(), "phase": self.phase, "step": self.step,
                                      "beats": self.beats, "at": time.time(),
                                      "phase_seconds": {k: round(v, 2) for k, v in spent.items()}}, sync=False)

    def stop(self) -> None:
        self._stop.set()


_current: Heartbeat | None = None


def start(job_dir: Path) -> None:
    """Start beating for this attempt (rank 0 only; a no-op in other ranks)."""
    global _current
    if int(os.environ.get("RANK", "0")) != 0 or _current is not None:
        return
    _current = Heartbeat(job_dir, float(os.environ.get(INTERVAL_ENV, "2") or 2)).start()


def finish() -> None:
    """The attempt is over (a warm worker moves on to another job): one last beat with the
    full phase times, then none; start() may then beat for the next job's dir."""
    global _current
    beat, _current = _current, None
    if beat is not None:
        beat.stop()
        beat._thread.join(timeout=5)
        try:
            beat._beat()
        except Exception as e:  # as in _run: never a reason to fail the job that just ended
            log.debug("last heartbeat not written: %s", e)


def phase(name: str, step: int | None = None) -> None:
    """The worker entered phase `name` (loading, tokenizing, training, eval, publishing)."""
    if _current is not None:
        _current.enter(name, step)


def progress(step: int | None = None) -> None:
    """Real progress in the current phase: a step, an eval example."""
    if _current is not None:
        _current.progress(step)


def current_phase() -> str | None:
    return _current.phase if _current is not None else None
