"""SQLite history (state.db, WAL): events, step metrics and probe evals.

History, not truth: jobs live in jobs/. Deleting state.db loses charts and the event log,
never a job. Every write is best-effort from the daemon's point of view: a locked or
broken database is logged by the caller and training goes on.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    job_id TEXT,
    kind TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);
-- /metrics counts events by kind at every scrape; months of history must not mean a scan.
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, id);
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    step INTEGER NOT NULL,
    ts REAL NOT NULL,
    loss REAL,
    lr REAL,
    tokens_per_s REAL,
    examples_done INTEGER,
    PRIMARY KEY (job_id, attempt, step)
);
CREATE TABLE IF NOT EXISTS evals (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    step INTEGER NOT NULL,
    ts REAL NOT NULL,
    final INTEGER NOT NULL,  -- 1 for the eval at the end of the job
    loss REAL,
    exact_match REAL,
    similarity REAL,
    data TEXT NOT NULL DEFAULT '{}',  -- the rest of the worker's row (counts, seconds, samples)
    PRIMARY KEY (job_id, attempt, step)
);
CREATE INDEX IF NOT EXISTS evals_ts ON evals(ts);
CREATE TABLE IF NOT EXISTS eval_groups (  -- per-tag scores of an eval (eval.group_by)
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    step INTEGER NOT NULL,
    tag TEXT NOT NULL,
    value TEXT NOT NULL,
    loss REAL,
    exact_match REAL,
    similarity REAL,
    examples INTEGER,
    PRIMARY KEY (job_id, attempt, step, tag, value)
);
"""

EVAL_COLS = ("job_id", "attempt", "step", "ts", "final", "loss", "exact_match", "similarity")


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(metrics)")}
        if "grad_norm" not in cols:  # a state.db from before the column: migrate in place
            self._db.execute("ALTER TABLE metrics ADD COLUMN grad_norm REAL")

    def event(self, kind: str, job_id: str | None = None, **data: Any) -> None:
        self._insert(time.time(), kind, job_id, data)

    def _insert(self, ts: float, kind: str, job_id: str | None, data: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO events (ts, job_id, kind, data) VALUES (?, ?, ?, ?)",
            (ts, job_id, kind, json.dumps(data, default=str)),
        )

    def rebuild(self, jobs: Path) -> int:
        """Events again from every job.json under `jobs` (the truth): submitted, each
        attempt's start and end, the state it is in now. Metrics and evals are not in
        job.json and stay lost. Returns the number of jobs."""
        n = 0
        dirs = [d for pattern in ("queued/*/*", "active/*", "done/*", "failed/*") for d in Path(jobs).glob(pattern)]
        for job_dir in sorted(dirs, key=lambda d: d.name):
            try:
                meta = json.loads((job_dir / "job.json").read_bytes())
            except (OSError, ValueError):
                continue
            state, job, n = job_dir.parent.name, meta.get("id", job_dir.name), n + 1
            rows = [(meta.get("submitted_at", 0.0), "submitted", {"name": meta.get("original_name")})]
            for a in meta.get("attempts", []):
                rows.append((a.get("started_at", 0.0), "attempt_start", {"number": a.get("number")}))
                if a.get("ended_at"):
                    rows.append((a["ended_at"], "attempt_end", {"outcome": a.get("outcome"), "error": a.get("error")}))
            rows.append((max(r[0] for r in rows), "rebuilt", {"state": state}))
            for ts, kind, data in rows:
                self._insert(ts, kind, job, data)
        return n

    def metrics(self, job_id: str, attempt: int, rows: list[dict[str, Any]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO metrics (job_id, attempt, step, ts, loss, lr, tokens_per_s, examples_done, "
            "grad_norm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (job_id, attempt, r["step"], r.get("ts", time.time()), r.get("loss"), r.get("lr"),
                 r.get("tokens_per_s"), r.get("examples_done"), r.get("grad_norm"))
                for r in rows
            ],
        )

    def evals(self, job_id: str, attempt: int, rows: list[dict[str, Any]]) -> None:
        """Rows of the worker's evals.jsonl (trainerd.worker.evals) for one attempt."""
        self._db.executemany(
            "INSERT OR REPLACE INTO evals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (job_id, attempt, r["step"], r.get("ts", time.time()), int(bool(r.get("final"))),
                 r.get("loss"), r.get("exact_match"), r.get("similarity"),
                 json.dumps({k: v for k, v in r.items() if k not in EVAL_COLS}, default=str))
                for r in rows
            ],
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO eval_groups VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(job_id, attempt, r["step"], tag, value, sc.get("loss"), sc.get("exact_match"),
              sc.get("similarity"), sc.get("examples"))
             for r in rows for tag, values in (r.get("groups") or {}).items() for value, sc in values.items()],
        )

    def events(self, job_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = "SELECT ts, job_id, kind, data FROM events"
        args: tuple = ()
        if job_id:
            q += " WHERE job_id = ?"
            args = (job_id,)
        q += " ORDER BY id DESC LIMIT ?"
        rows = self._db.execute(q, (*args, limit)).fetchall()
        return [{"ts": t, "job_id": j, "kind": k, **json.loads(d)} for t, j, k, d in rows]

    def close(self) -> None:
        self._db.close()


def open_or_rebuild(path: Path, jobs: Path) -> tuple[Ledger, str | None]:
    """The daemon's state.db, checked (SQLite's quick_check). One that does not open or
    fails the check (a disk that lost what SQLite had synced, a half-copied file) is set
    aside as state.db.corrupt-<time> with its -wal and -shm, and a new one is rebuilt
    from jobs/: it is history, not truth. Returns the ledger and, if it was rebuilt, a
    note for the log."""
    path = Path(path)
    try:
        led = Ledger(path)
        why = led._db.execute("PRAGMA quick_check").fetchone()[0]
        if why == "ok":
            return led, None
        led.close()
    except sqlite3.DatabaseError as e:
        why = str(e)
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{aside}{suffix}")
    led = Ledger(path)
    n = led.rebuild(jobs)
    return led, (f"{path}: unusable ({why}); set aside as {aside.name} and rebuilt from {jobs} "
                 f"({n} jobs; their step metrics and evals are not in job.json and are gone)")


def open_ro(path: Path) -> sqlite3.Connection | None:
    """state.db opened read-only (readers beside the daemon that writes), or None when it is
    missing or unusable: it is history, deletable at any time."""
    if not Path(path).is_file():
        return None
    try:
        return sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return None


def read_evals(path: Path, limit: int = 2000) -> list[dict[str, Any]] | None:
    """The newest `limit` probe evals of all jobs, oldest first, opened read-only (for the
    HTTP server and `status --watch`, beside the daemon that writes). None when state.db is
    missing or unusable: it is history, deletable at any time."""
    con = open_ro(path)
    if con is None:
        return None
    try:
        rows = con.execute(f"SELECT {', '.join(EVAL_COLS)}, data FROM evals ORDER BY ts DESC LIMIT ?",
                           (limit,)).fetchall()
    except sqlite3.Error:
        return None  # e.g. a state.db from before the evals table
    finally:
        con.close()
    out = []
    for r in reversed(rows):
        row = dict(zip(EVAL_COLS, r[:-1], strict=True))
        row["final"] = bool(row["final"])
        try:
            row.update({k: v for k, v in json.loads(r[-1]).items() if k not in EVAL_COLS})
        except ValueError:
            pass
        out.append(row)
    return out
