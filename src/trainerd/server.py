"""The HTTP side of trainerd: health, status, history, Prometheus metrics, the dashboard,
and control with a token.

It runs inside the supervisor on a daemon thread (stdlib ThreadingHTTPServer), so it
imports no torch, keeps no state that matters, and must never take the daemon down: every
answer is read from disk at request time (DESIGN.md principle 7), and any error becomes a
500 for that one request.

Seams (DESIGN.md): this module reads status and writes wishes through control.py. The one
thing it adds to the queue, an upload, goes through Queue.submit(move=True), exactly like an
inbox file, so it is validated, hashed and rejected with line numbers the same way.

Security, in short:
- Bound to 127.0.0.1 by default ([server] host). Reads need no token; every write
  (control, upload) needs `Authorization: Bearer <run/token>` (0600, made at first start,
  compared in constant time). Browsers cannot add that header cross-origin without a CORS
  preflight, which is never answered (no CORS headers), so a web page cannot drive it.
- While bound to loopback, a request whose Host header names another host is refused
  (421): that is what a DNS-rebinding page would send to read status from the browser.
- No endpoint takes a filesystem path from the request: job ids must match JOB_ID_RE and
  are looked up with Queue.find; static assets come from a fixed table; an upload's name is
  only ever a label (original_name), the bytes go to a temp file we name.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from trainerd import __version__, atomic, control, history, status, wishes
from trainerd.config import DataMapConfig, QueueConfig, ServerConfig
from trainerd.control import Desired
from trainerd.jobs import (
    ERROR_JSON,
    EVALS,
    JOB_JSON,
    METRICS,
    PROGRESS_JSON,
    JobMeta,
    JobState,
    Priority,
)
from trainerd.paths import Layout
from trainerd.queue import JobRef, Queue, QueueError
from trainerd.validate import TRAINED_SUFFIXES

log = logging.getLogger("trainerd.server")

# /healthz: the supervisor loop records a heartbeat at least every HEARTBEAT_INTERVAL_S
# (it caps its sleep at this, whatever queue.poll_seconds says), so a loop that has not
# beaten for five intervals is stuck, e.g. in a hung filesystem call. Deliberately not
# derived from the config: a health check must not become lenient because someone set a
# long poll interval.
HEARTBEAT_INTERVAL_S = 2.0
STALE_AFTER_S = 5 * HEARTBEAT_INTERVAL_S

JOB_ID_RE = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9]{6}-[A-Za-z0-9._-]+")
JOB_ID_MAX = 128  # queue ids are at most 63 chars; a longer one would be ENAMETOOLONG
UPLOAD_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")
CONTROL_BODY_MAX = 16 * 1024  # {"reason": ...} never needs more
REASON_MAX = 500
ETA_WINDOW_STEPS = 50  # the ETA uses the recent step rate, not the attempt's average
CHART_POINTS_MAX = 20_000
SERIES_COLS = ("attempt", "step", "ts", "loss", "lr", "tokens_per_s", "examples_done", "grad_norm")  # /api/metrics
# /api/evals: one point per probe eval (trainerd.worker.evals), across jobs
EVAL_SERIES = ("job_id", "attempt", "step", "ts", "final", "loss", "exact_match", "similarity",
               "examples", "generated", "complete", "seconds", "probe_sha")
EVALS_MAX = 20_000

TOKEN_FILE = "token"
SERVER_JSON = "server.json"
UPLOADS_DIR = "uploads"  # run/uploads: partial uploads, same filesystem as jobs/ for the rename
UPLOAD_PREFIX, UPLOAD_SUFFIX = ".upload-", ".part"

# Checkpoint saves run from well under a second (a LoRA adapter) to minutes (full weights).
CHECKPOINT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# Request path -> packaged asset. A fixed table: no request text ever reaches a file name.
STATIC: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/controls.js": ("controls.js", "text/javascript; charset=utf-8"),
    "/static/tryit.js": ("tryit.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
# The dashboard loads only its own files and talks only to this server.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

LOOPBACK_NAMES = ("localhost", "::1", "ip6-localhost")

# --------------------------------------------------------------------------- small helpers
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        d = atomic.read_json(path)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _jsonable(x: Any) -> Any:
    """NaN/inf are not JSON (browsers reject them): report them as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _is_loopback(host: str) -> bool:
    h = host.strip("[]").lower()
    return h in LOOPBACK_NAMES or h.startswith("127.")


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def ensure_token(layout: Layout) -> str:
    """run/token: made once (random, 0600), reused across restarts so a saved token keeps
    working. Delete the file and restart the daemon to rotate it."""
    path = layout.run / TOKEN_FILE
    token = read_token(layout)
    if token:
        with contextlib.suppress(OSError):
            if path.stat().st_mode & 0o077:  # someone loosened it; a token is a password
                os.chmod(path, 0o600)
        return token
    token = secrets.token_urlsafe(32)
    atomic.write_text(path, token + "\n", mode=0o600)  # mkstemp: 0600 from the first byte
    return token


def read_token(layout: Layout) -> str | None:
    try:
        return (layout.run / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def ledger_metrics(db: Path, job_id: str) -> list[dict[str, Any]] | None:
    """The job's step series from state.db, opened read-only (the supervisor is the writer).

    None when there is no usable database: state.db is history, deletable at any time.
    """
    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return None
    try:
        cols = {r[1] for r in con.execute("PRAGMA table_info(metrics)")}
        # grad_norm came later: a state.db the daemon has not opened since has no such column.
        want = [c for c in SERIES_COLS if c in cols]
        rows = con.execute(f"SELECT {', '.join(want)} FROM metrics WHERE job_id = ? ORDER BY attempt, step",
                           (job_id,)).fetchall()
    except sqlite3.Error:
        return None
    finally:
        con.close()
    return [{c: None for c in SERIES_COLS} | dict(zip(want, r, strict=True)) for r in rows]


class JsonlTail:
    """Incremental reader of append-only metrics.jsonl files, for pollers.

    The dashboard asks for the active job's curve every 2 s; re-parsing a long job's whole
    file each time would cost the CPU that trains. We keep what was parsed and read only the
    new bytes, up to the last complete line (the worker may be mid-write). A replaced or
    shrunk file (requeue archives it) is read again from the start.
    """

    def __init__(self, max_files: int = 16, cols: tuple[str, ...] = SERIES_COLS):
        self._files: OrderedDict[Path, tuple[int, int, list[dict[str, Any]]]] = OrderedDict()
        self._max = max_files
        self._cols = cols  # kept per row for a whole job: only what we serve
        self._lock = threading.Lock()

    def rows(self, path: Path) -> list[dict[str, Any]]:
        with self._lock:
            try:
                st = os.stat(path)
            except OSError:
                self._files.pop(path, None)
                return []
            ino, offset, rows = self._files.get(path, (st.st_ino, 0, []))
            if ino != st.st_ino or st.st_size < offset:
                ino, offset, rows = st.st_ino, 0, []
            if st.st_size > offset:
                offset, rows = self._read_more(path, offset, rows)
            self._files[path] = (ino, offset, rows)
            self._files.move_to_end(path)
            while len(self._files) > self._max:
                self._files.popitem(last=False)
            return list(rows)

    def _read_more(self, path: Path, offset: int, rows: list[dict[str, Any]]) -> tuple[int, list]:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return offset, rows
        end = data.rfind(b"\n") + 1  # leave a half-written last line for next time
        parsed = (_parse_line(line, self._cols) for line in data[:end].splitlines())
        rows = rows + [r for r in parsed if r is not None]
        return offset + end, rows


def _parse_line(line: bytes, cols: tuple[str, ...]) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None  # a line cut by a crash mid-write
    if not isinstance(row, dict) or "step" not in row:
        return None
    return {c: row.get(c) for c in cols}


def eta_seconds(progress: dict[str, Any], rows: list[dict[str, Any]]) -> float | None:
    """Seconds to the end of the epoch at the recent step rate of the running attempt.

    Uses the last ETA_WINDOW_STEPS logged steps (checkpoint saves inside the window are
    included, publishing at the end is not). None until two steps of this attempt are logged.
    """
    step, total = _num(progress.get("step")), _num(progress.get("max_steps"))
    if step is None or not total:
        return None
    if step >= total:
        return 0.0
    attempt = progress.get("attempt")
    recent = [r for r in rows if r.get("attempt") == attempt and _num(r.get("ts")) is not None]
    recent = recent[-ETA_WINDOW_STEPS:]
    if len(recent) < 2:
        return None
    dstep = float(recent[-1]["step"]) - float(recent[0]["step"])
    dt = float(recent[-1]["ts"]) - float(recent[0]["ts"])
    if dstep <= 0 or dt <= 0:
        return None
    return (total - step) * dt / dstep


def _downsample(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Evenly spaced points, always keeping the last: a chart needs shape, not every step."""
    if len(rows) <= limit:
        return rows
    stride = len(rows) / (limit - 1)
    return [rows[int(i * stride)] for i in range(limit - 1)] + [rows[-1]]


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


class HttpError(Exception):
    """An answer other than 200, raised from anywhere in a request; `extra` joins the body."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.code, self.message, self.headers, self.extra = code, message, headers or {}, extra


# --------------------------------------------------------------------------- the app
@dataclass
class App:
    """Everything the endpoints answer, as plain methods returning JSON-able dicts.

    Kept apart from the HTTP plumbing so each answer is a function of the disk. The only
    in-process state is caches (safe to lose) and the checkpoint-time histogram.
    """

    layout: Layout
    cfg: ServerConfig
    heartbeat: Callable[[], float]
    loopback: bool = True
    data_map: DataMapConfig = field(default_factory=DataMapConfig)  # uploads validate as intake does
    jsonl: JsonlTail = field(default_factory=JsonlTail)
    eval_tail: JsonlTail = field(default_factory=lambda: JsonlTail(4, (*EVAL_SERIES, "samples", "groups")))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _submit_lock: threading.Lock = field(default_factory=threading.Lock)
    _facts: dict[str, tuple[tuple[int, int, int], int, int]] = field(default_factory=dict)
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
    def disk(self) -> dict[str, int]:
        du = shutil.disk_usage(self.layout.base)
        return {"free_bytes": du.free, "total_bytes": du.total, "used_bytes": du.used}

    def observe_checkpoint(self, job_id: str, progress: dict[str, Any]) -> None:
        """Feed the histogram each checkpoint once (progress.json keeps only the latest)."""
        secs = _num(progress.get("last_checkpoint_seconds"))
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
        now = time.time()
        ckpt_at = _num(p.get("last_checkpoint_at"))
        total = p.get("examples_total") or summary.get("examples")
        return {
            "id": job_id, "name": summary.get("name"), "priority": summary.get("priority"),
            "attempt": p.get("attempt") or summary.get("attempts"),
            "step": p.get("step"), "max_steps": p.get("max_steps"),
            "examples_done": p.get("examples_done", summary.get("examples_done", 0)),
            "examples_total": total,
            "loss": p.get("loss"), "lr": p.get("lr"), "tokens_per_s": p.get("tokens_per_s"),
            # Only a worker that is training has an ETA; a paused job's progress is old.
            "eta_seconds": eta_seconds(p, rows) if daemon_state == "training" else None,
            "rss_bytes": p.get("rss_bytes"), "gpu_bytes": p.get("gpu_bytes"),
            "last_checkpoint": p.get("last_checkpoint"),
            "last_checkpoint_age": None if ckpt_at is None else max(0.0, now - ckpt_at),
            "last_checkpoint_seconds": p.get("last_checkpoint_seconds"),
            "last_checkpoint_bytes": p.get("last_checkpoint_bytes"),
            "updated_at": p.get("updated_at"),
        }

    def status(self) -> dict[str, Any]:
        s = status.collect(self.layout)
        _ok, health = self.health()
        daemon = s["daemon"]
        state = daemon.get("state") if daemon.get("running") else None
        disk: dict[str, Any] = self.disk()
        live = _read_json(self.layout.status) if daemon.get("running") else None
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
            key = (str(ref.path), _stat_key(ref.path / JOB_JSON), _stat_key(ref.path / METRICS))
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

    def jobs(self, query: dict[str, str]) -> dict[str, Any]:
        state = query.get("state", "all")
        if state not in ("all", *(s.value for s in JobState)):
            raise HttpError(400, f"state must be all, queued, active, done or failed, not {state!r}")
        try:
            limit = int(query.get("limit", "50"))
        except ValueError:
            raise HttpError(400, "limit must be an integer") from None
        try:
            offset = max(0, int(query.get("offset", "0")))
        except ValueError:
            raise HttpError(400, "offset must be an integer") from None
        limit = max(1, min(limit, 5000))
        refs, total = jobs_page(self.queue(), state, limit, offset)
        out = [self.summary(r) for r in refs]
        made = history.produced_versions(self.layout, [r.id for r in refs if r.state == JobState.DONE])
        for s in out:
            s["version"] = made.get(s["id"])
        return {"state": state, "total": total, "offset": offset, "limit": limit, "jobs": out}

    def find(self, job_id: str) -> JobRef:
        if len(job_id) > JOB_ID_MAX or not JOB_ID_RE.fullmatch(job_id):
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
                "error": _read_json(ref.path / ERROR_JSON) if ref.state == JobState.FAILED else None,
                "progress": _read_json(ref.path / PROGRESS_JSON) if ref.state == JobState.ACTIVE else None,
            }
        raise HttpError(409, f"{job_id} is changing state; try again")

    def metrics_series(self, job_id: str, query: dict[str, str]) -> dict[str, Any]:
        """Step series: state.db for attempts it holds (the supervisor copies an attempt's
        rows there when it ends), the job's own metrics.jsonl for the rest (the running
        attempt, or everything when state.db is gone). Points are per (attempt, step); a
        crashed attempt's repeated steps stay, tagged with their attempt."""
        try:
            limit = max(10, min(int(query.get("max_points", "5000")), CHART_POINTS_MAX))
        except ValueError:
            raise HttpError(400, "max_points must be an integer") from None
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
        progress = _read_json(ref.path / PROGRESS_JSON) if ref.state == JobState.ACTIVE else None
        shown = _downsample(rows, limit)
        return {
            "job_id": job_id, "state": ref.state.value, "source": source or None,
            "total_points": len(rows), "count": len(shown),
            "max_steps": (progress or {}).get("max_steps") or (meta.steps_done if meta else None),
            "examples_total": meta.examples if meta else None,
            "series": {c: [r.get(c) for r in shown] for c in SERIES_COLS},
        }

    def evals(self, query: dict[str, str]) -> dict[str, Any]:
        """Probe evals of every job over time, oldest first: state.db for ended attempts (the
        supervisor copies them there), the active job's evals.jsonl for the running one.
        `latest` is the newest eval with its sample answers."""
        from trainerd.ledger import read_evals

        try:
            limit = max(1, min(int(query.get("limit", "2000")), EVALS_MAX))
        except ValueError:
            raise HttpError(400, "limit must be an integer") from None
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

    def models(self, query: dict[str, str]) -> dict[str, Any]:
        """The newest `limit` versions (default 50): months of training make hundreds; with
        the forgetting matrix and the gate's overrides (docs/EVALS.md)."""
        from trainerd import gate
        from trainerd.line import forgetting

        try:
            limit = max(1, min(int(query.get("limit", "50")), 5000))
        except ValueError:
            raise HttpError(400, "limit must be an integer") from None
        versions = status.model_versions(self.layout, limit)
        return {"current": status.current_model(self.layout), "versions": versions,  # the matrix of this page
                "matrix": forgetting.matrix(self.layout, [(v["version"], v) for v in versions]),
                "gate_overrides": gate.overrides(self.layout)}

    # ----------------------------------------------------------------- writes
    def control(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise HttpError(400, "reason must be a string")
        reason = (reason or "").strip()[:REASON_MAX] or "dashboard"
        if action == "skip":
            # Same rule as `trainerd skip`: the skip names the job active right now.
            active = self.queue().list(JobState.ACTIVE)
            if not active:
                raise HttpError(409, "no job is active, so there is nothing to skip")
            skip = control.request_skip(self.layout, active[0].id, reason)
            return {"ok": True, "action": "skip", "job_id": skip.job_id, "reason": reason}
        state = {"pause": Desired.PAUSED, "resume": Desired.RUNNING, "stop": Desired.STOPPED}[action]
        wish = control.set_wish(self.layout, state, reason)
        return {"ok": True, "action": action, "desired": wish.state.value, "reason": wish.reason}

    def wish(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """A queue or model-line edit, written as a wish (trainerd.wishes): 202, the daemon
        carries it out; GET /api/control/actions/<id> gives the outcome."""
        args = {k: body.get(k) for k in ("job_id", "priority", "version") if body.get(k) is not None}
        job_id = args.get("job_id")
        if job_id is not None and not (isinstance(job_id, str) and len(job_id) <= JOB_ID_MAX
                                       and JOB_ID_RE.fullmatch(job_id)):
            raise HttpError(400, "job_id must be a job id, like 20261123T101500-123456-name")
        try:
            w = wishes.request(self.layout, action, **args)
        except wishes.WishError as e:
            raise HttpError(400, str(e)) from None
        return {"ok": True, "action": action, "wish": w["id"], "state": "pending", "args": args,
                "outcome": f"/api/control/actions/{w['id']}"}

    def upload_dir(self) -> Path:
        d = self.layout.run / UPLOADS_DIR
        d.mkdir(parents=True, exist_ok=True)
        return d

    def clean_uploads(self) -> None:
        """Partial uploads from a previous run were never acknowledged; nobody waits for them."""
        d = self.layout.run / UPLOADS_DIR
        for p in d.glob(UPLOAD_PREFIX + "*" + UPLOAD_SUFFIX) if d.is_dir() else []:
            with contextlib.suppress(OSError):
                p.unlink()

    def submit(self, tmp: Path, name: str, priority: Priority) -> tuple[int, dict[str, Any]]:
        """Queue a fully received upload (renamed in: validated exactly like an inbox file)."""
        ledger = None
        try:
            from trainerd.ledger import Ledger

            ledger = Ledger(self.layout.state_db)  # per request: sqlite handles are per thread
        except Exception as e:
            log.debug("state.db unavailable for upload events: %s", e)
        try:
            q = Queue(self.layout, QueueConfig(), on_event=ledger.event if ledger else None,
                      data_map=self.data_map)
            with self._submit_lock:  # one id clock for concurrent uploads
                ref = q.submit(tmp, priority, move=True, original_name=name)
        finally:
            if ledger is not None:
                ledger.close()
        if ref.state == JobState.QUEUED:
            meta = JobMeta.load(ref.path)
            log.info("upload %s queued as %s (%s)", name, ref.id, priority.value)
            return 201, {"id": ref.id, "state": ref.state.value, "priority": priority.value,
                         "examples": meta.examples}
        err = _read_json(ref.path / ERROR_JSON) or {}
        log.info("upload %s rejected as %s: %s", name, ref.id, err.get("reason"))
        return 422, {"id": ref.id, "state": ref.state.value, "error": err.get("reason"),
                     "errors": err.get("errors", []), "error_count": err.get("error_count")}


# --------------------------------------------------------------------------- HTTP plumbing
class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never holds up the daemon's exit
    request_queue_size = 64

    def __init__(self, addr: tuple[str, int], app: App):
        self.app = app
        from trainerd.metrics import registry  # imports this module: bound late

        self.registry = registry(app)
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(addr, _Handler)

    # Keep-alive connections outlive serve_forever(); stop() closes them too, so a browser
    # polling every 2 s does not keep talking to a server that was stopped.
    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: the dashboard polls
    server_version = f"trainerd/{__version__}"
    sys_version = ""
    timeout = 30  # seconds a client may stay silent mid-request (slow uploads included)

    # ----------------------------------------------------------------- plumbing
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self._unread:
            # The body was refused unread: it must not be parsed as the next request.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._responded = True

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(_jsonable(obj), default=str, separators=(",", ":")).encode()
        self._send(code, body, "application/json", headers)

    def _error(self, code: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        headers = dict(headers or {})
        if code == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="trainerd"'
        self._json(code, {"error": message, **extra}, headers)

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "send the body with a Content-Length (chunked encoding is not supported)")
        if raw is None:
            return None
        if not raw.strip().isdigit():
            raise HttpError(400, "bad Content-Length")
        return int(raw)

    def _authorized(self) -> bool:
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        token = read_token(self.server.app.layout)
        if scheme.lower() != "bearer" or not given or token is None:
            return False
        return hmac.compare_digest(given.strip().encode(), token.encode())

    def _host_ok(self) -> bool:
        """DNS-rebinding guard while bound to loopback: the Host must name this machine."""
        if not self.server.app.loopback:
            return True
        host = self.headers.get("Host")
        if not host:
            return True  # HTTP/1.0 clients; a browser always sends Host
        name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        return _is_loopback(name)

    def _dispatch(self, method: str) -> None:
        self._responded = False
        # Until a handler reads it, a request body is "unread" and the connection must close.
        self._unread = method == "POST" and (self.headers.get("Content-Length", "0").strip() not in ("", "0")
                                             or bool(self.headers.get("Transfer-Encoding")))
        try:
            if not self._host_ok():
                raise HttpError(421, "this server answers only to localhost names while bound to loopback")
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            if method == "POST":
                self._post(url.path, query)
            else:
                self._get(url.path, query)
        except HttpError as e:
            if not self._responded:
                self._error(e.code, e.message, e.headers, **e.extra)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:
            log.exception("%s %s failed", method, self.path)
            if not self._responded:
                self._error(500, f"internal error: {type(e).__name__}: {e}")
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # ----------------------------------------------------------------- routes
    def _get(self, path: str, query: dict[str, str]) -> None:
        app = self.server.app
        if path in STATIC:
            return self._static(*STATIC[path])
        if path == "/healthz":
            ok, body = app.health()
            return self._json(200 if ok else 503, body)
        if path == "/metrics":
            return self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        if path == "/api/status":
            return self._json(200, app.status())
        if path == "/api/jobs":
            return self._json(200, app.jobs(query))
        if path == "/api/models":
            return self._json(200, app.models(query))
        if path == "/api/evals":
            return self._json(200, app.evals(query))
        for prefix, fn in (("/api/jobs/", app.job), ("/api/metrics/", None)):
            if path.startswith(prefix) and path.count("/") == 3:
                job_id = path[len(prefix):]  # raw (not %-decoded): a valid id needs no escaping
                return self._json(200, fn(job_id) if fn else app.metrics_series(job_id, query))
        if path.startswith("/api/control/actions/") and path.count("/") == 4:
            found = wishes.outcome(app.layout, path.rsplit("/", 1)[1])
            if found is None:
                raise HttpError(404, "no such wish")
            return self._json(200, found)
        if path.startswith("/api/control/") or path in ("/api/queue", "/api/generate", "/api/compare"):
            raise HttpError(405, "use POST", {"Allow": "POST"})
        raise HttpError(404, "not found")

    def _post(self, path: str, query: dict[str, str]) -> None:
        action = path.removeprefix("/api/control/")
        asks = {"/api/generate": "web_generate", "/api/compare": "web_compare"}  # trainerd.ask
        if not (path == "/api/queue" or path in asks
                or (path != action and action in ("pause", "resume", "stop", "skip", *wishes.ACTIONS))):
            raise HttpError(404, "not found")
        if not self._authorized():
            raise HttpError(401, "missing or wrong token: send 'Authorization: Bearer <BASE/run/token>'")
        if path == "/api/queue":
            return self._upload(query)
        if path in asks:  # a child process answers: this process never loads torch
            from trainerd import ask

            return self._json(*getattr(ask, asks[path])(self.server.app.layout, self._body()))
        body = self._body()
        if action in wishes.ACTIONS:  # queue / model-line edits: a wish the daemon carries out
            return self._json(202, self.server.app.wish(action, body))
        self._json(200, self.server.app.control(action, body))

    def _body(self) -> dict[str, Any]:
        """A small JSON object body (control, generate, compare)."""
        length = self._content_length() or 0
        if length > CONTROL_BODY_MAX:
            raise HttpError(413, f"a control request body is at most {CONTROL_BODY_MAX} bytes")
        raw = self.rfile.read(length) if length else b""
        self._unread = False
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise HttpError(400, "body must be JSON, e.g. {\"reason\": \"...\"}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        return body

    def _upload(self, query: dict[str, str]) -> None:
        app = self.server.app
        name = query.get("name", "")
        if not (UPLOAD_NAME_RE.fullmatch(name) and name.endswith(TRAINED_SUFFIXES) and ".." not in name
                and not name.startswith(".")):
            raise HttpError(400, "name must be a plain file name of letters, digits, '.', '_' or '-', "
                            "ending in .jsonl or .json (no '/', no '..')")
        try:
            priority = Priority(query.get("priority", "normal"))
        except ValueError:
            raise HttpError(400, "priority must be high, normal or low") from None
        length = self._content_length()
        if length is None:
            raise HttpError(411, "Content-Length is required")
        limit = int(app.cfg.max_upload_mb * 1024 * 1024)
        if length > limit:
            # Decided from the header alone: the body is never read (the connection closes).
            raise HttpError(413, f"{length} bytes is over server.max_upload_mb = {app.cfg.max_upload_mb:g}; "
                            "drop large files into inbox/ instead", limit_bytes=limit)
        fd, tmp_name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=UPLOAD_SUFFIX, dir=app.upload_dir())
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                left = length
                while left:
                    try:
                        chunk = self.rfile.read(min(left, 1 << 20))
                    except TimeoutError:
                        raise HttpError(408, "the upload stalled; send it again") from None
                    if not chunk:
                        raise HttpError(400, f"the body ended {left} bytes before its Content-Length")
                    f.write(chunk)
                    left -= len(chunk)
                self._unread = False
                f.flush()
                os.fsync(f.fileno())
            code, body = app.submit(tmp, name, priority)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()  # gone already when the queue renamed it in
        self._json(code, body)

    def _static(self, resource: str, ctype: str) -> None:
        try:
            body = resources.files("trainerd").joinpath("static", resource).read_bytes()
        except (FileNotFoundError, OSError):
            raise HttpError(500, f"dashboard asset {resource} is not installed (package data)") from None
        self._send(200, body, ctype, {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer",
                                      "X-Frame-Options": "DENY"})


# --------------------------------------------------------------------------- public API
@dataclass
class ServerHandle:
    host: str
    port: int
    url: str
    _httpd: _Server
    _thread: threading.Thread
    _layout: Layout
    _stopped: bool = False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close open connections, and withdraw run/server.json if ours."""
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()
        self._thread.join(timeout)
        info = _read_json(self._layout.run / SERVER_JSON) or {}
        if info.get("pid") == os.getpid() and info.get("port") == self.port:
            with contextlib.suppress(FileNotFoundError):
                (self._layout.run / SERVER_JSON).unlink()


def start_server(layout: Layout, cfg: ServerConfig, heartbeat: Callable[[], float],
                 data_map: DataMapConfig | None = None) -> ServerHandle:
    """Serve HTTP for `layout` on a daemon thread; returns once the socket is listening.

    `heartbeat()` returns the time.time() of the supervisor loop's last pass. Raises
    OSError when the address cannot be bound (the caller logs it and trains on without HTTP).
    """
    layout.run.mkdir(parents=True, exist_ok=True)
    ensure_token(layout)
    app = App(layout, cfg, heartbeat, loopback=_is_loopback(cfg.host), data_map=data_map or DataMapConfig())
    app.clean_uploads()
    server_cls = _Server6 if ":" in cfg.host else _Server
    httpd = server_cls((cfg.host, cfg.port), app)
    port = int(httpd.server_address[1])
    # The URL a client on this machine uses: a wildcard bind is reached through loopback.
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(cfg.host, cfg.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    # serve_forever notices stop() only between polls: 0.1 s keeps stopping prompt (a
    # daemon's warm stop, a test's teardown) for ten idle wake-ups a second.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                              name="trainerd-http", daemon=True)
    thread.start()
    atomic.write_json(layout.run / SERVER_JSON, {"url": url, "port": port, "pid": os.getpid()})
    log.info("HTTP on %s (dashboard, /metrics, /healthz; token in %s)", url, layout.run / TOKEN_FILE)
    return ServerHandle(cfg.host, port, url, httpd, thread, layout)
