"""The daemon's log: where it goes, how it is rotated, what a record carries.

- logs/trainerd.log is rotated by size (LOG_MAX_BYTES, LOG_BACKUPS kept), so months of
  training never fill the disk with log. SIGHUP reopens it too (reopen()), for people who
  prefer logrotate's copy-and-move.
- Under systemd (JOURNAL_STREAM is set) stderr already goes to the journal, so the records
  there carry no time stamp of their own (journald adds one).
- JSON records carry job_id, attempt and version where they apply: from `extra=` when the
  caller gives them, else job_id is read off the supervisor's convention of starting a
  job's message with "<job id>: ".
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
from pathlib import Path
from typing import Any

LOG_FORMATS = ("text", "json")
LOG_FILE = "trainerd.log"
LOG_MAX_BYTES = 20 * 1024 * 1024
LOG_BACKUPS = 5
CONTEXT_KEYS = ("job_id", "attempt", "version")
_JOB_ID = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9]{6}-[A-Za-z0-9._-]+")


class LogFormatError(ValueError):
    pass


def check_format(fmt: str) -> str:
    if fmt not in LOG_FORMATS:
        raise LogFormatError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    return fmt


class JobContext(logging.Filter):
    """Fills record.job_id from a message of the form "%s: ..." whose first argument is a
    job id, when the caller did not pass it in `extra`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None and isinstance(record.msg, str) \
                and record.msg.startswith("%s:") and isinstance(record.args, tuple) and record.args:
            first = record.args[0]
            if isinstance(first, str) and _JOB_ID.fullmatch(first):
                record.job_id = first
        return True


class JsonFormatter(logging.Formatter):
    def format(self, r: logging.LogRecord) -> str:
        d: dict[str, Any] = {"ts": r.created, "level": r.levelname, "logger": r.name, "msg": r.getMessage()}
        for k in CONTEXT_KEYS:
            v = getattr(r, k, None)
            if v is not None:
                d[k] = v
        if r.exc_info:
            d["exc"] = self.formatException(r.exc_info)
        return json.dumps(d, default=str)


def _text_formatter(stamped: bool) -> logging.Formatter:
    if stamped:
        return logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    return logging.Formatter("%(levelname)-7s %(name)s: %(message)s")


def setup(logs_dir: Path, fmt: str, verbose: bool) -> Path:
    """Log to stderr and to logs/trainerd.log (rotated); returns the file's path."""
    check_format(fmt)
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = logs_dir / LOG_FILE
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter() if fmt == "json" else _text_formatter(not journal))
    file = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS,
                                                encoding="utf-8")
    file.setFormatter(JsonFormatter() if fmt == "json" else _text_formatter(True))
    for h in (stream, file):
        h.addFilter(JobContext())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[stream, file], force=True)
    return path


def reopen() -> int:
    """Reopen every log file (SIGHUP): after logrotate moved it away, the daemon writes to a
    new file of the same name. Returns how many were reopened."""
    n = 0
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.acquire()
            try:
                if h.stream is not None:
                    h.stream.close()
                h.stream = h._open()
                n += 1
            finally:
                h.release()
    return n


def publish_line(job_id: str, name: str, facts: dict[str, Any], probe: dict[str, Any] | None) -> str:
    """One line per publish: "published v0012 from a.jsonl (ID): loss 2.31 -> 1.87, probe ..."."""
    def num(x: Any) -> str:
        return "?" if x is None else f"{float(x):.3g}"

    parts = [f"loss {num(facts.get('first_loss'))} -> {num(facts.get('last_loss'))}",
             f"{facts.get('examples_done', 0)} examples, {facts.get('steps', 0)} steps "
             f"in {float(facts.get('train_seconds') or 0):.0f}s"]
    cut = [f"{facts[k]} {k}" for k in ("dropped", "truncated") if facts.get(k)]
    if cut:
        parts.append(", ".join(cut))
    if probe:
        parts.append(f"probe loss {num(probe.get('loss'))}, exact match {num(probe.get('exact_match'))}")
    return f"published {facts.get('version') or '?'} from {name} ({job_id}): " + "; ".join(parts)


def tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str | None:
    """The last `lines` lines of a log file (reading at most its last max_bytes), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - max_bytes))
            data = f.read()
    except OSError:
        return None
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def final_probe(job_dir: Path, attempt: int | None = None) -> dict[str, Any] | None:
    """The job's end-of-job probe eval from its evals.jsonl (the worker's last row)."""
    from trainerd.jobs import EVALS

    try:
        lines = (job_dir / EVALS).read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("final") and (attempt is None or row.get("attempt") == attempt):
            return row
    return None
