"""What a job is: its states, its metadata file (job.json), and the worker's exit contract.

A job is a directory; its *state* is the folder it lives in (queued/<prio>, active, done,
failed), never a field in job.json. job.json carries what does not change with the state:
where the file came from and the history of attempts.
"""

from __future__ import annotations

import os
import time
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from trainerd import atomic

JOB_JSON = "job.json"
DATA = "data.jsonl"
ERROR_JSON = "error.json"
PROGRESS_JSON = "progress.json"
HEARTBEAT_JSON = "heartbeat.json"  # the worker's phase, step and liveness count (trainerd.worker.heartbeat)
WORKER_LOG = "worker.log"
WORKER_ERROR = "worker-error.json"  # the worker's own account of why it failed
WORKER_LOCK = ".worker.lock"  # flocked by the live worker of a job
WORKER_TIMINGS = "worker-timings.json"  # where an attempt's time went (trainerd.worker.timing)
# Under torchrun the launcher's exit status is torchrun's, not the worker's: rank 0 writes
# its ExitCode here, and the supervisor trusts this file over the exit status. A warm
# worker (trainerd.worker.warm) writes it too, for a job it finished and outlives.
WORKER_OUTCOME = "worker-outcome.json"
# The write end of a pipe the daemon gave the worker (trainerd.handoff): a line per job the
# worker finished and outlives; end of file when it exits. Wakes the daemon at once.
REPORT_FD_ENV = "TRAINERD_REPORT_FD"
GROUP_LOCKED_ENV = "TRAINERD_GROUP_LOCKED"  # set by the launcher, which holds WORKER_LOCK
PARENT_ENV = "TRAINERD_PARENT_PID"  # a child's expected parent (the daemon, or torchrun's agent)


def child_env() -> dict[str, str]:
    """The environment of a process the daemon starts (worker, torchrun group, lifecycle
    task): offline hub, unbuffered logs, and who its parent is (see worker.main)."""
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
                **{PARENT_ENV: str(os.getpid())})
METRICS = "metrics.jsonl"
TOKEN_CACHE = "tokens"  # the job's tokenized examples (trainerd.worker.data), with a manifest
TOKEN_ERROR = "tokenize-error.json"  # the tokenizing stage's reason a queued job cannot train
EVALS = "evals.jsonl"  # probe evals, one row per eval (trainerd.worker.evals)
TENSORBOARD = "tensorboard"  # event files of the job's attempts


class JobState(str, Enum):
    QUEUED = "queued"
    ACTIVE = "active"
    DONE = "done"
    FAILED = "failed"


class Priority(str, Enum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class ExitCode(IntEnum):
    """The worker's exit status is its whole report to the supervisor (DESIGN.md)."""

    FINISHED = 0  # epoch trained and published
    STOPPED = 3  # asked to stop; a checkpoint was saved; resumable, not an attempt
    DATA_ERROR = 4  # the file cannot be trained; not retryable
    RESOURCE_ERROR = 5  # out of memory: retried with half the micro-batch
    DISK_LOW = 6  # stopped (without a checkpoint if there was no room); daemon pauses itself
    NONFINITE = 7  # loss or gradient became NaN/Inf; rolled back to the last good checkpoint
    MODEL_UNAVAILABLE = 8  # the model cannot be loaded (gone, broken template); daemon pauses itself
    # anything else, a signal included, is a crash and counts as an attempt


class Outcome(str, Enum):
    FINISHED = "finished"
    STOPPED = "stopped"
    DATA_ERROR = "data_error"
    RESOURCE_ERROR = "resource_error"
    DISK_LOW = "disk_low"
    NONFINITE = "nonfinite"
    CRASHED = "crashed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"  # the daemon itself died while the attempt ran
    STALLED = "stalled"  # no progress for daemon.stall_seconds: stopped, then killed, by the daemon
    MODEL_UNAVAILABLE = "model_unavailable"  # not the job's fault: the daemon pauses until it is back
    PREEMPTED = "preempted"  # warm-stopped for a higher-priority job (queue.preempt); not an attempt

    @classmethod
    def from_exit(cls, code: int) -> Outcome:
        return {
            ExitCode.FINISHED: cls.FINISHED,
            ExitCode.STOPPED: cls.STOPPED,
            ExitCode.DATA_ERROR: cls.DATA_ERROR,
            ExitCode.RESOURCE_ERROR: cls.RESOURCE_ERROR,
            ExitCode.DISK_LOW: cls.DISK_LOW,
            ExitCode.NONFINITE: cls.NONFINITE,
            ExitCode.MODEL_UNAVAILABLE: cls.MODEL_UNAVAILABLE,
        }.get(code, cls.CRASHED)  # type: ignore[call-overload]

    @property
    def counts_as_attempt(self) -> bool:
        """Failures count toward max_attempts. Not counted: a stop the user asked for, a
        full disk (the daemon pauses itself), and the OOM and NaN fallbacks, which have
        their own limits (micro-batch 1; one retry), and a preemption by a higher-priority job."""
        return self not in (Outcome.FINISHED, Outcome.STOPPED, Outcome.DISK_LOW, Outcome.RESOURCE_ERROR,
                            Outcome.NONFINITE, Outcome.MODEL_UNAVAILABLE, Outcome.PREEMPTED)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    try:
        return f"exit {code} ({ExitCode(code).name.lower()})"
    except ValueError:
        return f"exit {code}"


class Attempt(BaseModel):
    number: int
    started_at: float
    ended_at: float | None = None
    outcome: Outcome | None = None
    exit_code: int | None = None
    error: str | None = None
    pid: int | None = None
    priority: Priority | None = None  # the queue folder it was claimed from


class JobMeta(BaseModel):
    id: str
    original_name: str
    source_folder: str | None = None  # inbox sub-folder the file came from, if any
    sha256: str
    size: int
    examples: int
    priority: Priority = Priority.NORMAL  # as submitted; the folder is the truth
    submitted_at: float = Field(default_factory=time.time)
    seed: int = 0
    attempts: list[Attempt] = Field(default_factory=list)
    history: list[dict[str, Any]] = Field(default_factory=list)  # requeues, skips, notes
    not_before: float = 0.0  # back-off: not claimed before this time
    examples_done: int = 0
    steps_done: int = 0
    first_loss: float | None = None  # of this run (since the last requeue), for status/history
    last_loss: float | None = None
    micro_batch_size: int | None = None  # set by the OOM fallback; grad_accum grows to match
    # From the token cache, once tokenized (trainerd.worker.data): `examples` counts the
    # file's records, `sequences` what is trained (a multi-turn chat may train several).
    sequences: int | None = None
    tokens: int | None = None
    dropped: int = 0  # sequences left out by train.overlength (or a prompt alone too long)
    truncated: int = 0
    nonfinite_events: int = 0
    # The eval gate's record of the version this job published (trainerd.gate): result,
    # action (current / flagged / held), verdict such as "held: probe loss +12 % vs v0007".
    gate: dict[str, Any] | None = None
    version: str | None = None  # the version it published (current or held)
    # The job whose higher priority stopped this one's last attempt (queue.preempt): the next
    # attempt resumes from its checkpoint on the version it trained from, not on current.
    preempted_by: str | None = None

    @property
    def failed_attempts(self) -> int:
        return sum(1 for a in self.attempts if a.outcome is not None and a.outcome.counts_as_attempt)

    @property
    def own_failures(self) -> int:
        """Failed attempts that were the job's doing. An attempt cut short by the daemon's
        own death (INTERRUPTED) counts toward max_attempts, so a job that takes the machine
        down is quarantined in the end, but earns no back-off: after a reboot the job
        resumes from its checkpoint at once (docs/DECISIONS.md)."""
        return sum(1 for a in self.attempts if a.outcome is not None and a.outcome.counts_as_attempt
                   and a.outcome != Outcome.INTERRUPTED)

    @classmethod
    def load(cls, job_dir: Path) -> JobMeta:
        """Read job.json. Its one writer is the queue (trainerd.queue)."""
        return cls.model_validate(atomic.read_json(Path(job_dir) / JOB_JSON))


def token_counts(job_dir: Path) -> dict[str, int] | None:
    """The token cache's counts (sequences, tokens, dropped, truncated), or None before it
    exists. Read from its manifest, which is written last: a half-built cache has none."""
    try:
        man = atomic.read_json(Path(job_dir) / TOKEN_CACHE / atomic.MANIFEST)
    except (OSError, ValueError):
        return None
    return {k: int(man.get(k) or 0) for k in ("sequences", "tokens", "dropped", "truncated")}


def fallback_micro_batch(effective: int, current: int) -> int | None:
    """Next micro-batch after an out-of-memory: the largest divisor of the effective batch
    that is at most half the current one, so grad_accum * micro_batch stays exactly the
    same and a resumed attempt skips exactly the examples already trained. None at 1."""
    if current <= 1:
        return None
    return max(d for d in range(1, current // 2 + 1) if effective % d == 0)
