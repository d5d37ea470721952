"""SQLite history (state.db, WAL): events and step metrics.

History, not truth: jobs live in jobs/. Deleting state.db loses charts and the event log,
never a job. Every write is best-effort from the daemon's point of view: a locked or
broken database is logged by the caller and training goes on.
"""

from __future__ import annotations

import json
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
"""


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def event(self, kind: str, job_id: str | None = None, **data: Any) -> None:
        self._db.execute(
            "INSERT INTO events (ts, job_id, kind, data) VALUES (?, ?, ?, ?)",
            (time.time(), job_id, kind, json.dumps(data, default=str)),
        )

    def metrics(self, job_id: str, attempt: int, rows: list[dict[str, Any]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (job_id, attempt, r["step"], r.get("ts", time.time()), r.get("loss"), r.get("lr"),
                 r.get("tokens_per_s"), r.get("examples_done"))
                for r in rows
            ],
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
