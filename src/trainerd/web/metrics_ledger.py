"""The /metrics families read from state.db (counters, the duration histogram, the current
version's probe scores) and from the model line (current version, last publish).

Counters come only from the ledger: without a usable state.db they have no sample (absent,
not a fake 0), and a deleted state.db reads as a counter reset, which it is.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from trainerd import atomic
from trainerd.history import TRAINED_EVENT
from trainerd.ledger import open_ro
from trainerd.line.versions import version_number
from trainerd.paths import Layout
from trainerd.web.common import num, read_json_obj

# A job's training time, summed over its attempts: minutes for a small file, a day for a big one.
DURATION_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)
# issue 14's stall detection ends an attempt with this outcome; a string, not an enum
# member, so this module does not depend on which Outcome members exist.
STALLED = "stalled"
COUNTERS = {
    "finished": ("trainerd_jobs_finished", "Jobs that finished (done events in state.db)"),
    "failed": ("trainerd_jobs_failed", "Jobs sent to failed/, rejected files included (state.db)"),
    "attempts": ("trainerd_attempts", "Training attempts started (state.db)"),
    "stalled": ("trainerd_attempts_stalled", "Attempts ended because the worker stalled (state.db)"),
    "dropped": ("trainerd_examples_dropped", "Sequences left out of finished jobs by train.overlength"),
    "truncated": ("trainerd_examples_truncated", "Sequences of finished jobs cut to train.max_seq_len"),
    "examples": ("trainerd_examples_trained", "Examples trained: finished jobs (state.db) plus the "
                 "active job's progress"),
}
DURATION_DOC = "Training time of each finished job (its attempts summed), from state.db"


def gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    """A gauge with one sample, or none when the value is unknown (absent, not a fake 0)."""
    g = GaugeMetricFamily(name, doc)
    if num(value) is not None:
        g.add_metric([], float(value))
    return g


def ledger_counts(con: sqlite3.Connection) -> dict[str, float]:
    """Monotonic totals from the events table, one indexed query per kind."""
    out: dict[str, float] = {}
    # A rejected file lands in failed/ too (the gauge counts it), so it counts as a failure.
    for key, kinds in (("finished", ("done",)), ("failed", ("failed", "rejected")),
                       ("attempts", ("attempt_start",))):
        out[key] = sum(con.execute("SELECT COUNT(*) FROM events WHERE kind = ?", (k,)).fetchone()[0]
                       for k in kinds)
    out["stalled"] = con.execute(
        "SELECT COUNT(*) FROM events WHERE kind = 'attempt_end' AND json_extract(data, '$.outcome') = ?",
        (STALLED,)).fetchone()[0]
    row = con.execute(
        "SELECT COALESCE(SUM(json_extract(data, '$.examples_done')), 0), "
        "COALESCE(SUM(json_extract(data, '$.dropped')), 0), "
        "COALESCE(SUM(json_extract(data, '$.truncated')), 0) FROM events WHERE kind = ?",
        (TRAINED_EVENT,)).fetchone()
    out["examples"], out["dropped"], out["truncated"] = (float(v) for v in row)
    return out


def durations(con: sqlite3.Connection) -> list[float]:
    rows = con.execute("SELECT json_extract(data, '$.train_seconds') FROM events WHERE kind = ?",
                       (TRAINED_EVENT,)).fetchall()
    return [v for (v,) in rows if num(v) is not None]


def histogram(name: str, doc: str, values: list[float], buckets: tuple[float, ...]) -> HistogramMetricFamily:
    counts = [sum(1 for v in values if v <= b) for b in buckets]
    cumulative = [(repr(b), float(c)) for b, c in zip(buckets, counts, strict=True)]
    cumulative.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=float(sum(values)))


def final_probe(con: sqlite3.Connection, job_ids: list[str]) -> tuple[float | None, float | None]:
    """(loss, exact_match) of the newest end-of-job probe eval among `job_ids`."""
    if not job_ids:
        return None, None
    marks = ",".join("?" * len(job_ids))
    row = con.execute(f"SELECT loss, exact_match FROM evals WHERE job_id IN ({marks}) AND final = 1 "
                      "ORDER BY ts DESC LIMIT 1", job_ids).fetchone()
    return (row[0], row[1]) if row else (None, None)


def current_version(layout: Layout) -> tuple[int | None, dict[str, Any]]:
    """(number of models/current, its manifest); (0, {}) while the line is the base model."""
    try:
        name = os.readlink(layout.current_model)
    except OSError:
        return (0, {}) if not os.path.lexists(layout.current_model) else (None, {})
    return version_number(name), read_json_obj(layout.models / name / atomic.MANIFEST) or {}


def last_publish(layout: Layout) -> float | None:
    """created_at of the newest version by number (a rollback does not change it)."""
    try:
        names = [n for n in os.listdir(layout.models) if version_number(n) is not None]
    except OSError:
        return None
    if not names:
        return None
    newest = max(names, key=lambda n: version_number(n) or 0)
    return num((read_json_obj(layout.models / newest / atomic.MANIFEST) or {}).get("created_at"))


def history_metrics(layout: Layout, active_progress: dict[str, Any] | None) -> Iterator[Metric]:
    """The counters and the duration histogram; the active job's examples join the total."""
    con = open_ro(layout.state_db)
    counts: dict[str, float] = {}
    times: list[float] = []
    if con is not None:
        try:
            counts, times = ledger_counts(con), durations(con)
        except sqlite3.Error:
            counts, times = {}, []  # an old or damaged state.db: no counter samples
        finally:
            con.close()
    for key, (name, doc) in COUNTERS.items():
        c = CounterMetricFamily(name, doc)
        if key in counts:
            extra = float((active_progress or {}).get("examples_done") or 0) if key == "examples" else 0.0
            c.add_metric([], counts[key] + extra)
        yield c
    if counts:
        yield histogram("trainerd_job_duration_seconds", DURATION_DOC, times, DURATION_BUCKETS)
    else:
        yield HistogramMetricFamily("trainerd_job_duration_seconds", DURATION_DOC)


def model_metrics(layout: Layout) -> Iterator[Metric]:
    number, manifest = current_version(layout)
    yield gauge("trainerd_current_version", "Number of the current model version (v0012 is 12; 0 while "
                "the line is the base model)", number)
    yield gauge("trainerd_last_publish_timestamp_seconds", "Unix time the newest model version was "
                "published", last_publish(layout))
    loss = exact = None
    con = open_ro(layout.state_db)
    if con is not None:
        ids = [str(j.get("id")) for j in manifest.get("jobs") or [] if isinstance(j, dict)]
        try:
            loss, exact = final_probe(con, ids)
        except sqlite3.Error:
            pass
        finally:
            con.close()
    yield gauge("trainerd_probe_loss", "Probe-set loss of the current version (its job's final eval)", loss)
    yield gauge("trainerd_probe_exact_match", "Probe-set exact-match rate of the current version", exact)
