"""Chart data: a job's step series and the probe evals, from state.db and the files the
worker appends to (metrics.jsonl, evals.jsonl), read incrementally.

Light on purpose (no FastAPI): `trainerd watch` draws from the same readers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from trainerd.web.common import num

ETA_WINDOW_STEPS = 50  # the ETA uses the recent step rate, not the attempt's average
CHART_POINTS_MAX = 20_000
SERIES_COLS = ("attempt", "step", "ts", "loss", "lr", "tokens_per_s", "examples_done", "grad_norm")  # /api/metrics
# /api/evals: one point per probe eval (trainerd.worker.evals), across jobs
EVAL_SERIES = ("job_id", "attempt", "step", "ts", "final", "loss", "exact_match", "similarity",
               "examples", "generated", "complete", "seconds", "probe_sha")
EVALS_MAX = 20_000


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
    step, total = num(progress.get("step")), num(progress.get("max_steps"))
    if step is None or not total:
        return None
    if step >= total:
        return 0.0
    attempt = progress.get("attempt")
    recent = [r for r in rows if r.get("attempt") == attempt and num(r.get("ts")) is not None]
    recent = recent[-ETA_WINDOW_STEPS:]
    if len(recent) < 2:
        return None
    dstep = float(recent[-1]["step"]) - float(recent[0]["step"])
    dt = float(recent[-1]["ts"]) - float(recent[0]["ts"])
    if dstep <= 0 or dt <= 0:
        return None
    return (total - step) * dt / dstep


def downsample(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Evenly spaced points, always keeping the last: a chart needs shape, not every step."""
    if len(rows) <= limit:
        return rows
    stride = len(rows) / (limit - 1)
    return [rows[int(i * stride)] for i in range(limit - 1)] + [rows[-1]]
