"""A warm worker: after a finished job, the same process may train the next one.

`python -m trainerd.worker JOB_DIR --warm N` trains JOB_DIR as any worker does. If that
job finished, it writes worker-outcome.json, says so on the report pipe
(trainerd.handoff, the daemon's side) and reads the next job dir, one line, on stdin. The
daemon has already claimed that job and recorded its attempt: the worker never touches the
queue. End of file on stdin (nothing to hand over) ends the process with status 0.

Every job keeps its own attempt, log (stdout and stderr move to its worker.log), job lock,
heartbeat, checkpoints and exit record; a crash or kill during a job is that job's failed
attempt, as with a fresh process. What the jobs share is the process (torch and the HF stack
imported once) and the `Carry`: the model as the previous job published it, and its
tokenizer. The next job trains on it only if that version is still the current one, and
with the same load settings: a candidate the eval gate held, a rollback, a consolidation or
a changed [train] config means a load from disk, exactly as a fresh worker would.

The process does not wait for another job (it exits after its report) when it has trained
N jobs, when a stop was asked, or when its memory grew by more than GROWTH over what it
held after its first job (host RSS, or CUDA memory allocated): a leak costs a process
start, never the machine.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.config import Config
from trainerd.jobs import REPORT_FD_ENV, WORKER_LOG, WORKER_OUTCOME, ExitCode
from trainerd.paths import Layout
from trainerd.worker import heartbeat, timing

log = logging.getLogger("trainerd.worker.warm")

GROWTH = 0.25  # memory over the first job's by this fraction: retire instead of taking another


def load_key(cfg: Config) -> str:
    """What a loaded model depends on besides the version: the base and the [train] section
    (method, LoRA shape, precision, attention...). Any change means a load from disk."""
    return json.dumps({"base_model": cfg.base_model, "train": cfg.train.model_dump(mode="json")},
                      sort_keys=True)


@dataclass
class Kept:
    model: Any
    tokenizer: Any


class Carry:
    """The model a finished job published, for the next job of the same process."""

    def __init__(self) -> None:
        self.kept: Kept | None = None
        self.version: str | None = None
        self.created_at: float | None = None
        self.key: str | None = None
        self.pending_key: str | None = None  # the running job's load key, taken before any fallback edit

    def take(self, parent: Any, cfg: Config) -> Kept | None:
        """The kept model if `parent` (the current version now) is the one it was published
        as, under the same load settings; else None, and the stale model is let go first so
        that two never sit in memory."""
        self.pending_key = load_key(cfg)
        kept = self.kept
        same = (kept is not None and parent.version == self.version and self.key == self.pending_key
                and parent.manifest.get("created_at") == self.created_at)
        if not same:
            self.drop()
            return None
        assert kept is not None
        _ready_to_train(kept.model, cfg)
        log.info("continuing %s from memory (no load from disk)", parent.version)
        return kept

    def keep(self, model: Any, tokenizer: Any, version: str, layout: Layout, held: bool) -> None:
        """After publishing `version`: keep it for the next job, unless the eval gate held it
        (a held candidate is never trained on; the next job loads the current version)."""
        if held:
            self.drop()
            return
        manifest = atomic.verify_manifest(layout.models / version, check_hashes=False)
        self.kept = Kept(model, tokenizer)
        self.version, self.created_at, self.key = version, manifest.get("created_at"), self.pending_key

    def drop(self) -> None:
        self.kept = None
        self.version = self.created_at = self.key = None
        release_memory()


def _ready_to_train(model: Any, cfg: Config) -> None:
    """Undo what publishing (models.for_saving) and the last Trainer left on the model, so it
    is what models.load_for_training would return: no KV cache, the training attention, and
    forward unwrapped from accelerate's mixed-precision autocast (else each job wraps again)."""
    from trainerd.worker import models

    model.config.use_cache = False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    want = models.attention_implementation(cfg.train)
    if getattr(base.config, "_attn_implementation", None) != want:
        base.set_attn_implementation(want)
    for m in {id(model): model, id(base): base}.values():
        if "_original_forward" in vars(m):
            m.forward = m._original_forward
            del m._original_forward


def release_memory() -> None:
    """The finished job's Trainer, optimizer state and batches are garbage now (cycles
    included): collect them, and give CUDA's cached blocks back."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # memory hygiene only
        pass


def _memory() -> tuple[int, int]:
    """(host RSS, CUDA bytes allocated) now."""
    import psutil

    rss = psutil.Process().memory_info().rss
    try:
        import torch

        cuda = int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0
    except Exception:
        cuda = 0
    return rss, cuda


class Session:
    """One warm process: how many jobs it trained, what it held after the first."""

    def __init__(self, max_jobs: int):
        self.max_jobs = max_jobs
        self.jobs = 0
        self.first: tuple[int, int] | None = None
        fd = os.environ.get(REPORT_FD_ENV, "")
        self.report_fd = int(fd) if fd.isdigit() else None

    def retire_reason(self, stopping: bool) -> str | None:
        """Why this process takes no further job (None: it offers itself)."""
        if stopping:
            return "a stop was asked"
        if self.jobs >= self.max_jobs:
            return f"it trained {self.jobs} jobs (train.warm_jobs)"
        now = _memory()
        if self.first is None:
            self.first = now
            return None
        for what, first, cur in (("RSS", self.first[0], now[0]), ("CUDA memory", self.first[1], now[1])):
            if first and cur > first * (1 + GROWTH):
                return f"its {what} grew from {first / 2**20:.0f} MiB to {cur / 2**20:.0f} MiB"
        return None

    def report(self, job_dir: Path, code: int, more: bool) -> None:
        """The job's exit record, durable before the daemon hears of it."""
        atomic.write_json(job_dir / WORKER_OUTCOME, {"exit": code, "pid": os.getpid(), "more": more})
        if self.report_fd is not None:
            try:
                os.write(self.report_fd, f"{job_dir.name} {code} {'more' if more else 'last'}\n".encode())
            except OSError:  # the daemon went away; PR_SET_PDEATHSIG ends us shortly
                pass


def next_job() -> Path | None:
    """The next job dir the daemon handed over, or None at end of file."""
    line = sys.stdin.readline()
    return Path(line.strip()) if line.strip() else None


def log_to(job_dir: Path) -> None:
    """stdout and stderr (and so every log line) into this job's worker.log from now on."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(job_dir / WORKER_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def serve(job_dir: Path, max_jobs: int, attempt: Callable[[Path, Carry], int],
          stopping: Callable[[], bool]) -> int:
    """Train job_dir, then each job handed over on stdin, while this process may go on.
    Returns the process exit status: the last job's when it did not finish, else 0."""
    session, carry = Session(max_jobs), Carry()
    while True:
        code = attempt(job_dir, carry)
        session.jobs += 1
        heartbeat.finish()
        timing.write(job_dir, exit=code, job_in_process=session.jobs)
        if code != int(ExitCode.FINISHED):
            return code  # the exit status is this job's record, as for any worker
        release_memory()  # the job's Trainer and optimizer state, before memory is compared
        carry_on = session.retire_reason(stopping())
        if carry_on is not None:
            log.info("not waiting for another job: %s", carry_on)
        session.report(job_dir, code, more=carry_on is None)
        if carry_on is not None:
            return code
        nxt = next_job()
        if nxt is None:
            return 0
        job_dir = nxt.resolve()
        log_to(job_dir)
        heartbeat.start(job_dir)
        timing.begin()
        log.info("warm worker (pid %d), job %d in this process: %s", os.getpid(), session.jobs + 1, job_dir.name)
