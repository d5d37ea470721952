"""The daemon's side of a warm worker (trainerd.worker.warm): start, hear, hand over, let go.

A single-process worker is started with a report pipe (REPORT_FD_ENV): the worker writes a
line there for each job it finished and outlives, and the pipe's end of file says it exited.
A reader thread wakes the supervisor's loop on either, so the next job starts without
waiting for a poll. With train.warm_jobs > 1 the worker also gets `--warm N` and a stdin
pipe: after its report it is *idle*, and the supervisor's next spawn hands it the job it
claimed (one line: the job dir) instead of starting a process. A worker nobody needs in the
tick its job ended is dismissed (stdin closed: it exits 0).

The supervisor keeps every queue transition and attempt record: it records the attempt's
start before the hand-over and its end when the worker reported (or exited). A worker that
died while idle is never handed a job (a fresh one is started); one that dies after a
hand-over is that job's failed attempt, as a fresh worker's crash would be.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
from dataclasses import dataclass, field
from typing import IO, Any

from trainerd.jobs import REPORT_FD_ENV
from trainerd.queue import JobRef

log = logging.getLogger("trainerd.handoff")


@dataclass
class Worker:
    """One worker process and what it said on its report pipe."""

    proc: subprocess.Popen
    warm: bool
    reported: dict[str, tuple[int, bool]] = field(default_factory=dict)  # job id -> (exit, more)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read_reports(self, fd: int, wake: threading.Event) -> None:
        """The reader thread: a line per finished job ("ID EXIT"), then end of file."""
        with os.fdopen(fd, "rb") as f:
            for line in f:
                parts = line.decode("utf-8", "replace").split()
                if len(parts) >= 2 and parts[1].lstrip("-").isdigit():
                    with self.lock:
                        self.reported[parts[0]] = (int(parts[1]), len(parts) < 3 or parts[2] != "last")
                wake.set()
        wake.set()  # the worker exited (or closed the pipe): the loop polls it now


class Handoff:
    def __init__(self, wake: threading.Event):
        self.wake = wake
        self.idle: Worker | None = None  # reported, alive, waiting on stdin for a job
        self.workers: dict[int, Worker] = {}  # pid -> worker, until it is reaped
        self._retired: list[subprocess.Popen] = []  # dismissed, not reaped yet

    def start(self, args: list[str], *, warm_jobs: int, env: dict[str, str], **popen: Any) -> subprocess.Popen:
        """Start a worker (a single process: warm_jobs > 1 makes it a warm one)."""
        r, w = os.pipe()
        warm = warm_jobs > 1
        env = {**env, REPORT_FD_ENV: str(w)}
        try:
            proc = subprocess.Popen([*args, *(["--warm", str(warm_jobs)] if warm else [])], env=env,
                                    pass_fds=(w,), **{**popen, **({"stdin": subprocess.PIPE} if warm else {})})
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)  # the worker holds the only write end: its exit is the pipe's end of file
        worker = Worker(proc, warm)
        self.workers[proc.pid] = worker
        threading.Thread(target=worker.read_reports, args=(r, self.wake), daemon=True,
                         name=f"worker-{proc.pid}-reports").start()
        return proc

    def poll(self, proc: subprocess.Popen, ref: JobRef, keep: bool) -> int | None:
        """The attempt's exit status: the worker's report for `ref` if it made one (it lives
        on), else the process's own. `keep`: it may take the next job (no stop, no skip
        was sent during this one); if not, it is dismissed."""
        worker = self.workers.get(proc.pid)
        said = None
        if worker is not None:
            with worker.lock:
                said = worker.reported.pop(ref.id, None)
        rc = proc.poll()
        if said is None:
            if rc is not None:
                self.workers.pop(proc.pid, None)
            return rc
        code, more = said
        assert worker is not None
        if rc is not None:
            self.workers.pop(proc.pid, None)
        elif keep and more and worker.warm:
            self.idle = worker
        else:
            self._dismiss(worker)
        return code

    def take(self, ref: JobRef) -> subprocess.Popen | None:
        """Hand `ref` (claimed, its attempt recorded) to the idle warm worker: its process,
        or None when there is none alive (the caller starts one)."""
        worker, self.idle = self.idle, None
        if worker is None:
            return None
        if worker.proc.poll() is not None or worker.proc.stdin is None:
            log.warning("the warm worker (pid %d) exited while idle (%s); starting a fresh one",
                        worker.proc.pid, worker.proc.returncode)
            self.workers.pop(worker.proc.pid, None)
            return None
        try:
            worker.proc.stdin.write(f"{ref.path}\n".encode())
            worker.proc.stdin.flush()
        except OSError as e:  # it died between the poll and the write
            log.warning("the warm worker (pid %d) did not take %s (%s); starting a fresh one",
                        worker.proc.pid, ref.id, e)
            self._dismiss(worker)
            return None
        log.info("%s: handed to the warm worker (pid %d)", ref.id, worker.proc.pid)
        return worker.proc

    def settle(self, busy: bool) -> None:
        """End of a tick: an idle worker no job was handed to is let go; retired ones reaped."""
        if not busy and self.idle is not None:
            worker, self.idle = self.idle, None
            self._dismiss(worker)
        self._retired = [p for p in self._retired if p.poll() is None]

    def stop(self) -> None:
        """At daemon exit: let the idle worker go (it would die with the daemon anyway)."""
        self.settle(busy=False)

    def _dismiss(self, worker: Worker) -> None:
        stdin: IO[bytes] | None = worker.proc.stdin
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()
        self.workers.pop(worker.proc.pid, None)
        self._retired.append(worker.proc)

