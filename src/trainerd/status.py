"""What `trainerd status` (and later the HTTP server) reports, read from disk only.

Truth is derived (DESIGN.md principle 7): "running" comes from the kernel lock, the
heartbeat in run/status.json tells whether the live daemon still responds, and progress
comes from the active job's own progress.json. No torch import anywhere on this path.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from trainerd import atomic, control, lock
from trainerd.config import QueueConfig
from trainerd.history import finished
from trainerd.jobs import (
    ERROR_JSON,
    HEARTBEAT_JSON,
    METRICS,
    PROGRESS_JSON,
    JobMeta,
    JobState,
    Outcome,
    token_counts,
)
from trainerd.paths import Layout
from trainerd.queue import JobRef, Queue
from trainerd.state import parse as parse_state

STALE_HEARTBEATS = 5  # "not responding" after this many missed heartbeats


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return atomic.read_json(path)
    except (OSError, ValueError):
        return None


def loss_curve(job_dir: Path) -> list[float]:
    out: list[float] = []
    try:
        with open(job_dir / METRICS) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash mid-write
                if row.get("loss") is not None:
                    out.append(float(row["loss"]))
    except OSError:
        pass
    return out


BACKOFF_CAUSE = {
    Outcome.CRASHED: "a crash", Outcome.STALLED: "a stall", Outcome.DATA_ERROR: "a data error",
    Outcome.INTERRUPTED: "the daemon's own death",
}


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, math.ceil(seconds))} s"
    m = math.ceil(seconds / 60)
    return f"{m} min" if m < 60 else f"{m // 60} h {m % 60} min"


def waiting(meta: JobMeta, now: float) -> str | None:
    """Why a queued job is not claimed yet, or None when it may be claimed now:
    "next try in 4 min (attempt 4, back-off after a crash)"."""
    if meta.not_before <= now:
        return None
    last = meta.attempts[-1].outcome if meta.attempts else None
    cause = BACKOFF_CAUSE.get(last, f"outcome {last.value}" if last else "a failed attempt")  # type: ignore[arg-type]
    return f"next try in {_minutes(meta.not_before - now)} (attempt {len(meta.attempts) + 1}, back-off after {cause})"


def current_model(layout: Layout) -> dict[str, Any]:
    link = layout.current_model
    if not os.path.lexists(link):
        return {"version": "base"}
    name = os.readlink(link)
    man = _read(layout.models / name / atomic.MANIFEST) or {}
    from trainerd import gate

    return {"version": name, "kind": man.get("kind"), "parent": man.get("parent"),
            "jobs": [j.get("id") for j in man.get("jobs", [])], "gate": gate.current_flag(layout, name, man)}


def job_summary(ref: JobRef) -> dict[str, Any]:
    try:
        meta = JobMeta.load(ref.path)
    except (OSError, ValueError):
        return {"id": ref.id, "state": ref.state.value, "error": "job.json unreadable"}
    # A finished job carries its first and last loss in job.json; only an unfinished one
    # needs its metrics file read.
    if meta.first_loss is not None and ref.state != JobState.ACTIVE:
        curve = [meta.first_loss, meta.last_loss]
    else:
        curve = loss_curve(ref.path)
    out: dict[str, Any] = {
        "id": ref.id, "state": ref.state.value, "name": meta.original_name,
        "priority": (ref.priority or meta.priority).value, "examples": meta.examples,
        "attempts": len(meta.attempts), "submitted_at": meta.submitted_at,
        "examples_done": meta.examples_done, "steps_done": meta.steps_done,
        "first_loss": curve[0] if curve else None, "last_loss": curve[-1] if curve else None,
        "sequences": meta.sequences, "tokens": meta.tokens, "dropped": meta.dropped, "truncated": meta.truncated,
        "version": meta.version, "gate": meta.gate,
    }
    if meta.sequences is None and ref.state in (JobState.QUEUED, JobState.ACTIVE):
        counts = token_counts(ref.path)  # tokenized while it waits (trainerd.tokstage)
        if counts:
            out.update(counts)
    if ref.state == JobState.FAILED:
        err = _read(ref.path / ERROR_JSON) or {}
        out["reason"] = err.get("reason")
    if ref.state == JobState.ACTIVE:
        out["progress"] = _read(ref.path / PROGRESS_JSON)
        out["heartbeat"] = _read(ref.path / HEARTBEAT_JSON)  # the worker's phase and step
    if ref.state == JobState.QUEUED:
        out["waiting"] = waiting(meta, time.time())
    return out


def collect(layout: Layout, recent: int = 10) -> dict[str, Any]:
    holder = lock.holder(layout.lock)
    st = _read(layout.status) if holder else None
    now = time.time()
    daemon: dict[str, Any] = {"running": holder is not None}
    if holder is not None:
        daemon.update(pid=holder.pid, since=holder.started_at)
        if st is not None:
            daemon.update(paused_reason=st.get("paused_reason"), inbox=st.get("inbox"))
            age = now - float(st.get("heartbeat_at", 0))
            interval = float(st.get("heartbeat_seconds", 2))
            known = parse_state(st.get("state"))
            # status.json names a DaemonState; another daemon version's unknown state is
            # shown as it is written rather than guessed.
            daemon.update(state=known.value if known is not None else st.get("state"), heartbeat_age=age,
                          responding=age <= STALE_HEARTBEATS * max(interval, 1.0),
                          loop_errors=st.get("loop_errors"))
    wish = control.read_wish(layout)
    q = Queue(layout, QueueConfig())  # listing needs no settings; a bad config must not hide status
    def listed(state: JobState) -> list[JobRef]:
        try:
            return q.list(state)
        except OSError:  # a broken folder: report the rest
            return []

    if "inbox" not in daemon:  # no daemon to ask: what the Maildir rules alone say
        try:
            daemon["inbox"] = q.inbox_report()
        except OSError:
            daemon["inbox"] = None
    # The `recent` that finished last (not that arrived last), oldest first; from the
    # ledger, so 10,000 done jobs cost no more than ten.
    done = finished(layout, (JobState.DONE,), recent).refs[::-1] if recent else []
    failed = finished(layout, (JobState.FAILED,), recent).refs[::-1] if recent else []
    return {
        "base_dir": str(layout.base),
        "daemon": daemon,
        "desired": {"state": wish.state.value, "reason": wish.reason},
        "queue": q.counts(),
        "active": [job_summary(r) for r in listed(JobState.ACTIVE)],
        "queued": [job_summary(r) for r in listed(JobState.QUEUED)[:recent]],  # read only those shown
        "done": [job_summary(r) for r in done],
        "failed": [job_summary(r) for r in failed],
        "model": current_model(layout),
        "publish": _read(layout.publish_json),  # [publish] hooks' last outcomes (trainerd.publish)
    }



def model_versions(layout: Layout, limit: int | None = None) -> list[dict[str, Any]]:
    """Versions oldest first; the newest `limit` of them when given (months make hundreds)."""
    from trainerd.line.versions import versions

    out = []
    for n in versions(layout)[-limit:] if limit else versions(layout):
        man = _read(layout.models / n / atomic.MANIFEST) or {"kind": "?", "broken": True}
        out.append({"version": n, **{k: v for k, v in man.items() if k != "files"}})
    return out
