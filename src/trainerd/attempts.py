"""The attempt policy: what happens to a job once one of its training attempts ended.

Two pure functions, no processes, no files: `classify` turns what the supervisor saw of
the worker (its exit status, our stop request, a stall, whether the job already reached
the model line) into an Outcome; `decide` turns that outcome, the job's record, the config
and the user's wishes into an Action. The supervisor only carries actions out
(trainerd.supervisor.workers), so every rule below is table-tested in tests/test_attempts.py.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from trainerd.config import Config
from trainerd.jobs import JobMeta, Outcome, describe_exit, fallback_micro_batch

COLD_STOP = "cold stop"  # Running.stop_reason of a worker killed by the second signal
STALLED = "stalled"  # Running.stop_reason of a worker the stall watch stopped
PREEMPT_PREFIX = "preempted by "  # Running.stop_reason of a preemption: "preempted by <job id>"


@dataclass(frozen=True)
class Ended:
    """What the supervisor saw of an attempt that ended."""

    said: int  # the worker's exit status (rank 0's, for a torchrun group)
    rc: int  # the process's own exit status (torchrun's agent for a group)
    group: bool = False
    stall: str | None = None  # the stall watch's reason, if it stopped the worker
    stop_reason: str | None = None  # why we asked it to stop, if we did
    published: bool = False  # the job is in the model line already
    worker_reason: str = ""  # the worker's own account of a failure (worker_failure_reason)


def classify(e: Ended) -> tuple[Outcome, str | None]:
    """The outcome of an attempt and, unless it finished or stopped cleanly, why."""
    outcome = Outcome.from_exit(e.said)
    error = None
    if e.stall and outcome not in (Outcome.FINISHED, Outcome.MODEL_UNAVAILABLE):
        # Counted whatever the worker did when asked to stop: a stopped checkpoint only
        # means the hang ended by itself; the next attempt resumes from the newest one.
        outcome, error = Outcome.STALLED, f"{e.stall}; then {describe_exit(e.said)}"
    elif e.stop_reason == COLD_STOP and outcome != Outcome.FINISHED:
        outcome, error = Outcome.STOPPED, "cold stop: worker killed without a checkpoint"
    elif e.stop_reason and (e.rc == -signal.SIGTERM or (e.group and e.said == e.rc and e.rc != 0)):
        # Our stop request landed before the worker had installed its handler (it was
        # still starting): nothing was trained since the last checkpoint; not a crash.
        outcome, error = Outcome.STOPPED, "stopped while the worker was starting"
    elif outcome not in (Outcome.FINISHED, Outcome.STOPPED):
        error = e.worker_reason
    if outcome == Outcome.STOPPED and e.stop_reason and e.stop_reason.startswith(PREEMPT_PREFIX):
        # The warm stop we asked for so that a higher-priority job can train (queue.preempt).
        outcome, error = Outcome.PREEMPTED, e.stop_reason
    if outcome != Outcome.FINISHED and e.published:
        # The worker published, then died on its way out (a stop or skip signal landing
        # during its exit, a kill): the job is in the model line, so it is done. Failing
        # it (a skip) would leave trained data in failed/, and a requeue would train it twice.
        outcome, error = Outcome.FINISHED, f"published, then {describe_exit(e.said)}"
    return outcome, error


class Do(str, Enum):
    DONE = "done"  # to done/ (its version and the gate's verdict recorded first)
    FAIL = "fail"  # to failed/ with the reason
    STAY = "stay"  # stays in active/; claimed first, resumes from its checkpoint
    REQUEUE = "requeue"  # back to its queue folder, claimable after `delay`
    PAUSE_DISK = "pause_disk"  # stays in active/; the daemon pauses until space returns
    PAUSE_MODEL = "pause_model"  # stays in active/; the daemon pauses until the model loads


@dataclass(frozen=True)
class Action:
    do: Do
    reason: str | None = None  # FAIL: error.json's reason; PAUSE_*: the pause's
    stage: str = "training"  # FAIL: error.json's stage
    detail: dict[str, Any] = field(default_factory=dict)  # FAIL: more of error.json
    delay: float = 0.0  # REQUEUE: back-off in seconds
    front: bool = False  # REQUEUE: before the jobs already queued at its priority
    changes: dict[str, Any] = field(default_factory=dict)  # job.json fields to set first
    note: dict[str, Any] | None = None  # an event for job.json's history
    clear_skip: bool = False  # the user's skip wish is used up
    warning: str | None = None  # what to log, at WARNING, before it is carried out


def decide(outcome: Outcome, error: str | None, meta: JobMeta, cfg: Config, *,
           skip_reason: str | None = None, skipped: bool = False) -> Action:
    """What to do with a job whose attempt ended with `outcome`. `meta` already holds the
    attempt's end (its outcome counted); `skipped` says the user asked to skip this job
    while it ran (`skip_reason`: what they gave)."""
    if outcome == Outcome.FINISHED:
        # Whatever the eval gate decided: a held version is written and verified, and the
        # job is done with its verdict (trainerd.gate); the next job trains from current.
        return Action(Do.DONE, clear_skip=skipped)  # a skip that came too late has no target left
    if skipped:
        return skipped_action(skip_reason)
    if outcome == Outcome.STOPPED:
        return Action(Do.STAY)  # with its checkpoint; resumed first next time
    if outcome == Outcome.PREEMPTED:
        # Not an attempt and no back-off: first in its priority's queue again; the job that
        # preempted it is claimed before it anyway. The next attempt resumes from the
        # version it trained from (JobMeta.preempted_by; docs/DECISIONS.md).
        by = (error or "").removeprefix(PREEMPT_PREFIX) or None
        return Action(Do.REQUEUE, front=True, changes={"preempted_by": by}, note={"event": "preempted", "by": by})
    if outcome == Outcome.DISK_LOW:
        return Action(Do.PAUSE_DISK, error or "disk full")  # resumes from its last checkpoint
    if outcome == Outcome.MODEL_UNAVAILABLE:
        # Resumes when the model is back (checked every 30 s, and at SIGHUP).
        return Action(Do.PAUSE_MODEL, error or "the model cannot be loaded")
    if outcome == Outcome.RESOURCE_ERROR:
        return _out_of_memory(meta, cfg, error)
    if outcome == Outcome.NONFINITE:
        events = meta.nonfinite_events + 1
        if events >= 2:
            return Action(Do.FAIL, f"training diverged twice on the same data: {error}",
                          changes={"nonfinite_events": events})
        return Action(Do.STAY, changes={"nonfinite_events": events},
                      warning=f"{error}; retrying once from the last good checkpoint")
    if outcome == Outcome.DATA_ERROR:
        # The file's fault, not the daemon's: a WARNING someone should read, not an ERROR.
        return Action(Do.FAIL, error or "data error", detail={"attempts": len(meta.attempts)},
                      warning=f"data error, sent to failed/: {error}")
    return _failed(outcome, error, meta, cfg)


def skipped_action(reason: str | None) -> Action:
    """The user's skip of a job (while its worker ran, or with none running): to failed/,
    where `trainerd queue requeue` can bring it back."""
    return Action(Do.FAIL, "skipped by user" + (f": {reason}" if reason else ""), stage="skip",
                  detail={"resumable": True}, clear_skip=True, note={"event": "skipped", "reason": reason})


def _failed(outcome: Outcome, error: str | None, meta: JobMeta, cfg: Config) -> Action:
    """A crash, a stall, or the daemon's own death: counted toward queue.max_attempts."""
    failed, limit = meta.failed_attempts, cfg.queue.max_attempts
    if outcome == Outcome.INTERRUPTED:
        if failed >= limit:
            # Counted like any failure, so a job that takes the machine down with it
            # (OOM killer, kernel panic) is quarantined instead of retried forever.
            return Action(Do.FAIL, f"gave up after {failed} failed attempt(s) (queue.max_attempts = {limit}); "
                          "the last was cut short by the daemon's own death. If this job is what brings "
                          "the machine down, fix its data or the model settings, then `trainerd queue requeue`",
                          detail={"attempts": len(meta.attempts)})
        # No back-off: the daemon's death is not the job's doing (docs/DECISIONS.md).
        return Action(Do.STAY)
    if failed >= limit:
        return Action(Do.FAIL, f"gave up after {failed} failed attempt(s); last: {error}",
                      detail={"attempts": len(meta.attempts)})
    delay = cfg.queue.backoff_after(meta.own_failures)  # a daemon death earns none
    return Action(Do.REQUEUE, delay=delay,
                  warning=f"attempt failed ({error}); retry {failed}/{limit - 1} in {delay:.0f}s")


def _out_of_memory(meta: JobMeta, cfg: Config, error: str | None) -> Action:
    """Same effective batch in smaller micro-batches, from the last checkpoint; give up
    with a clear reason once the micro-batch is 1."""
    t = cfg.train
    current = meta.micro_batch_size or t.micro_batch_size
    nxt = fallback_micro_batch(t.micro_batch_size * t.grad_accum, current)
    if nxt is None:
        return Action(Do.FAIL, f"out of memory even at micro-batch 1: {error}. Lower train.max_seq_len, "
                      "use LoRA instead of full fine-tuning, or a machine with more memory")
    return Action(Do.STAY, changes={"micro_batch_size": nxt},
                  note={"event": "oom_fallback", "micro_batch_size": nxt},
                  warning=f"out of memory at micro-batch {current}; retrying at {nxt} ({error})")
