"""The read model the HTTP routes answer from: plain methods returning JSON-able dicts.

Kept apart from the HTTP plumbing so each answer is a function of the disk. The only
in-process state is caches (safe to lose) and the checkpoint-time histogram.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram

from trainerd import __version__, gate, history, status
from trainerd.config import DataMapConfig, QueueConfig, ServerConfig
from trainerd.jobs import ERROR_JSON, EVALS, JOB_JSON, METRICS, PROGRESS_JSON, JobMeta, JobState
from trainerd.ledger import read_evals
from trainerd.line import forgetting
from trainerd.paths import Layout
from trainerd.queue import JOB_ID, JobRef, Queue, QueueError
from trainerd.state import STALE_AFTER_S, DaemonState
from trainerd.web.common import HttpError, num, read_json_obj, stat_key
from trainerd.web.series import (
    CHART_POINTS_MAX,
    EVAL_SERIES,
    EVALS_MAX,
    SERIES_COLS,
    JsonlTail,
    downsample,
    eta_seconds,
    ledger_metrics,
)

# Checkpoint saves run from well under a second (a LoRA adapter) to minutes (full weights).
CHECKPOINT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
JOB_STATES = ("all", *(s.value for s in JobState))
# Defaults of the list endpoints' query parameters (routes_read documents them).
JOBS_LIMIT, MODELS_LIMIT, EVALS_LIMIT, POINTS_DEFAULT = 50, 50, 2000, 5000


def jobs_page(q: Queue, state: str, limit: int, offset: int) -> tuple[list[JobRef], int]:
    """One page of /api/jobs: active and queued first (in the order they will train), then
    finished jobs newest finish first (trainerd.history: no job.json is read to order them)."""
    if state in (JobState.DONE.value, JobState.FAILED.value):
        page = history.finished(q.layout, (JobState(state),), limit, offset)
        return page.refs, page.total
    if state != "all":
        refs = q.list(JobState(state))
        return refs[offset:offset + limit], len(refs)
    unfinished = q.list(JobState.ACTIVE) + q.list(JobState.QUEUED)
    shown = unfinished[offset:offset + limit]
    rest = history.finished(q.layout, limit=limit - len(shown), offset=max(0, offset - len(unfinished)))
    return shown + rest.refs, len(unfinished) + rest.total


@dataclass
class Reader:
    layout: Layout
    cfg: ServerConfig
    heartbeat: Callable[[], float]  # time.time() of the supervisor loop's last pass
    loopback: bool = True
    data_map: DataMapConfig = field(default_factory=DataMapConfig)  # uploads validate as intake does
    jsonl: JsonlTail = field(default_factory=JsonlTail)
    eval_tail: JsonlTail = field(default_factory=lambda: JsonlTail(4, (*EVAL_SERIES, "samples", "groups")))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _summaries: OrderedDict[tuple, dict[str, Any]] = field(default_factory=OrderedDict)
    _seen_checkpoints: OrderedDict[tuple, None] = field(default_factory=OrderedDict)
    ckpt_hist: Histogram = field(default_factory=lambda: Histogram(
        "trainerd_checkpoint_save_seconds",
        "Time to commit a checkpoint (fsync + manifest + rename), from progress.json's "
        "last_checkpoint_seconds; each checkpoint observed once by this process when a "
        "scrape or status request sees it",
        buckets=CHECKPOINT_BUCKETS, registry=None))

    def queue(self) -> Queue:
        # Listing and submitting need no queue settings (status.collect does the same).
        return Queue(self.layout, QueueConfig())

    # ----------------------------------------------------------------- health
    def heartbeat_age(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        try:
            return max(0.0, now - float(self.heartbeat()))
        except Exception:  # a broken heartbeat source reads as "not beating", never a 500
            return math.inf

    def health(self) -> tuple[bool, dict[str, Any]]:
        age = self.heartbeat_age()
        ok = age <= STALE_AFTER_S
        return ok, {"ok": ok, "heartbeat_age": age, "stale_after": STALE_AFTER_S}

    # ----------------------------------------------------------------- status
    def disk(self) -> dict[str, Any]:
        du = shutil.disk_usage(self.layout.base)
        return {"free_bytes": du.free, "total_bytes": du.total, "used_bytes": du.used}

    def observe_checkpoint(self, job_id: str, progress: dict[str, Any]) -> None:
        """Feed the histogram each checkpoint once (progress.json keeps only the latest)."""
        secs = num(progress.get("last_checkpoint_seconds"))
        if secs is None:
            return
        key = (job_id, progress.get("last_checkpoint"), progress.get("last_checkpoint_at"))
        with self._lock:
            if key in self._seen_checkpoints:
                return
            self._seen_checkpoints[key] = None
            while len(self._seen_checkpoints) > 256:
                self._seen_checkpoints.popitem(last=False)
        self.ckpt_hist.observe(secs)

    def active_view(self, summary: dict[str, Any], daemon_state: str | None) -> dict[str, Any]:
        """The active job, flat: what a person or an alert wants without digging."""
        p = summary.get("progress") or {}
        job_id = summary["id"]
        self.observe_checkpoint(job_id, p)
        ref_path = self.layout.active / job_id  # id comes from a directory listing, not a request
        rows = self.jsonl.rows(ref_path / METRICS) if p else []
        ckpt_at = num(p.get("last_checkpoint_at"))
        return {
            "id": job_id, "name": summary.get("name"), "priority": summary.get("priority"),
            "attempt": p.get("attempt") or summary.get("attempts"),
            "step": p.get("step"), "max_steps": p.get("max_steps"),
            "examples_done": p.get("examples_done", summary.get("examples_done", 0)),
            "examples_total": p.get("examples_total") or summary.get("examples"),
            "loss": p.get("loss"), "lr": p.get("lr"), "tokens_per_s": p.get("tokens_per_s"),
            # Only a worker that is training has an ETA; a paused job's progress is old.
            "eta_seconds": eta_seconds(p, rows) if daemon_state == DaemonState.TRAINING.value else None,
            "rss_bytes": p.get("rss_bytes"), "gpu_bytes": p.get("gpu_bytes"),
            "last_checkpoint": p.get("last_checkpoint"),
            "last_checkpoint_age": None if ckpt_at is None else max(0.0, time.time() - ckpt_at),
            "last_checkpoint_seconds": p.get("last_checkpoint_seconds"),
            "last_checkpoint_bytes": p.get("last_checkpoint_bytes"),
            "updated_at": p.get("updated_at"),
        }

    def status(self) -> dict[str, Any]:
        s = status.collect(self.layout)
        _ok, health = self.health()
        daemon = s["daemon"]
        state = daemon.get("state") if daemon.get("running") else None
        disk = self.disk()
        live = read_json_obj(self.layout.status) if daemon.get("running") else None
        if live:
            # What the supervisor knows beyond collect(): why it paused itself, and its
            # disk guard's thresholds (pause below, warn below).
            daemon["paused_reason"] = live.get("paused_reason")
            guard = live.get("disk") or {}
            disk.update(pause_below_bytes=guard.get("pause_below_bytes"), low=guard.get("low"),
                        warn=guard.get("warn"))
        s.update(
            health=health, disk=disk, now=time.time(), version=__version__,
            job=self.active_view(s["active"][0], state) if s["active"] else None,
        )
        return s

    # ----------------------------------------------------------------- jobs
    def summary(self, ref: JobRef) -> dict[str, Any]:
        """status.job_summary plus finish time and training time, cached for settled jobs.

        job_summary reads a job's whole metrics.jsonl for its first and last loss; a done
        job never changes, so its answer is kept until its files do.
        """
        key = None
        if ref.state != JobState.ACTIVE:
            key = (str(ref.path), stat_key(ref.path / JOB_JSON), stat_key(ref.path / METRICS))
            with self._lock:
                if key in self._summaries:
                    self._summaries.move_to_end(key)
                    return dict(self._summaries[key])
        out = status.job_summary(ref)
        try:
            meta = JobMeta.load(ref.path)
        except (OSError, ValueError):
            meta = None
        if meta is not None and meta.attempts:
            ended = [a for a in meta.attempts if a.ended_at is not None]
            out["started_at"] = meta.attempts[0].started_at
            out["finished_at"] = ended[-1].ended_at if ended and ref.state == JobState.DONE else None
            out["train_seconds"] = sum(a.ended_at - a.started_at for a in ended)
            out["last_outcome"] = ended[-1].outcome.value if ended and ended[-1].outcome else None
        if key is not None:
            with self._lock:
                self._summaries[key] = dict(out)
                while len(self._summaries) > 4096:
                    self._summaries.popitem(last=False)
        return out

    def jobs(self, state: str = "all", limit: int = JOBS_LIMIT, offset: int = 0) -> dict[str, Any]:
        if state not in JOB_STATES:
            raise HttpError(400, f"state must be all, queued, active, done or failed, not {state!r}")
        limit, offset = max(1, min(limit, 5000)), max(0, offset)
        refs, total = jobs_page(self.queue(), state, limit, offset)
        out = [self.summary(r) for r in refs]
        made = history.produced_versions(self.layout, [r.id for r in refs if r.state == JobState.DONE])
        for s in out:
            s["version"] = made.get(s["id"])
        return {"state": state, "total": total, "offset": offset, "limit": limit, "jobs": out}

    def find(self, job_id: str) -> JobRef:
        if not JOB_ID.fullmatch(job_id):  # the queue's own rule: no path ever reaches a lookup
            raise HttpError(404, "not a job id")
        try:
            return self.queue().find(job_id)
        except QueueError:
            raise HttpError(404, f"no job {job_id}") from None

    def job(self, job_id: str) -> dict[str, Any]:
        for _ in range(3):  # the daemon may move the job between lookup and read
            ref = self.find(job_id)
            try:
                meta = JobMeta.load(ref.path)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                raise HttpError(500, f"{job_id}: job.json unreadable ({e})") from None
            return {
                "summary": self.summary(ref), "job": meta.model_dump(mode="json"),
                "error": read_json_obj(ref.path / ERROR_JSON) if ref.state == JobState.FAILED else None,
                "progress": read_json_obj(ref.path / PROGRESS_JSON) if ref.state == JobState.ACTIVE else None,
            }
        raise HttpError(409, f"{job_id} is changing state; try again")

    def metrics_series(self, job_id: str, max_points: int = POINTS_DEFAULT) -> dict[str, Any]:
        """Step series: state.db for attempts it holds (the supervisor copies an attempt's
        rows there when it ends), the job's own metrics.jsonl for the rest (the running
        attempt, or everything when state.db is gone). Points are per (attempt, step); a
        crashed attempt's repeated steps stay, tagged with their attempt."""
        limit = max(10, min(max_points, CHART_POINTS_MAX))
        ref = self.find(job_id)
        try:
            meta = JobMeta.load(ref.path)
        except (OSError, ValueError):
            meta = None
        # A requeued job starts again at attempt 1: rows from before the requeue are a
        # previous run (their metrics.jsonl is archived under history/), not this one.
        since = max([h.get("at", 0.0) for h in (meta.history if meta else [])
                     if h.get("event") == "requeued"] or [0.0])
        from_db = [r for r in ledger_metrics(self.layout.state_db, job_id) or [] if (r["ts"] or 0) >= since]
        have = {r["attempt"] for r in from_db}
        from_file = [r for r in self.jsonl.rows(ref.path / METRICS) if r.get("attempt") not in have]
        rows = sorted(from_db + from_file, key=lambda r: (r.get("attempt") or 0, r.get("step") or 0))
        source = "+".join(n for n, part in (("state.db", from_db), ("metrics.jsonl", from_file)) if part)
        progress = read_json_obj(ref.path / PROGRESS_JSON) if ref.state == JobState.ACTIVE else None
        shown = downsample(rows, limit)
        return {
            "job_id": job_id, "state": ref.state.value, "source": source or None,
            "total_points": len(rows), "count": len(shown),
            "max_steps": (progress or {}).get("max_steps") or (meta.steps_done if meta else None),
            "examples_total": meta.examples if meta else None,
            "series": {c: [r.get(c) for r in shown] for c in SERIES_COLS},
        }

    def evals(self, limit: int = EVALS_LIMIT) -> dict[str, Any]:
        """Probe evals of every job over time, oldest first: state.db for ended attempts (the
        supervisor copies them there), the active job's evals.jsonl for the running one.
        `latest` is the newest eval with its sample answers."""
        limit = max(1, min(limit, EVALS_MAX))
        from_db = read_evals(self.layout.state_db, limit) or []
        have = {(r["job_id"], r["attempt"]) for r in from_db}
        from_file = [{**r, "job_id": ref.id} for ref in self.queue().list(JobState.ACTIVE)
                     for r in self.eval_tail.rows(ref.path / EVALS) if (ref.id, r.get("attempt")) not in have]
        rows = sorted(from_db + from_file, key=lambda r: r.get("ts") or 0)[-limit:]
        source = "+".join(n for n, part in (("state.db", from_db), ("evals.jsonl", from_file)) if part)
        return {
            "source": source or None, "count": len(rows),
            "series": {c: [r.get(c) for r in rows] for c in EVAL_SERIES},
            "latest": rows[-1] if rows else None,
        }

    def models(self, limit: int = MODELS_LIMIT) -> dict[str, Any]:
        """The newest `limit` versions (default 50): months of training make hundreds; with
        the forgetting matrix and the gate's overrides (docs/EVALS.md)."""
        versions = status.model_versions(self.layout, max(1, min(limit, 5000)))
        return {"current": status.current_model(self.layout), "versions": versions,  # the matrix of this page
                "matrix": forgetting.matrix(self.layout, [(v["version"], v) for v in versions]),
                "gate_overrides": gate.overrides(self.layout)}
