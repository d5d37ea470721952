"""Prometheus metrics for /metrics, computed from disk at scrape time (no global registry).

Two kinds of numbers, kept apart so `rate()` and `promtool check metrics` read them right:
- Gauges are what is on disk now: jobs per folder, the active job's progress, the current
  version. Removing or requeueing a job lowers them, as it should.
- Counters only ever grow: they count events in state.db (the ledger), which survive a
  restart, a requeue and a removal. Deleting state.db resets them, which Prometheus reads
  as a counter reset (exactly what it is). Without a usable state.db they have no sample.

Every query uses an index (events_kind, the evals primary key); nothing here reads every
job.json, so a scrape costs the same after 10,000 jobs as after one.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from trainerd import __version__, atomic, control, lock
from trainerd.control import Desired
from trainerd.history import TRAINED_EVENT
from trainerd.jobs import PROGRESS_JSON, JobMeta, JobState
from trainerd.ledger import open_ro
from trainerd.line.versions import version_number as _version_number
from trainerd.paths import PRIORITIES, Layout

if TYPE_CHECKING:
    from trainerd.server import App

# The supervisor's states (run/status.json "state"), for a state-set metric; an unknown
# one is reported too.
DAEMON_STATES = ("starting", "idle", "training", "paused", "paused_disk", "paused_model", "stopped")
# A job's training time, summed over its attempts: minutes for a small file, a day for a big one.
DURATION_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)
# issue 14's stall detection ends an attempt with this outcome; a string, not an enum
# member, so this module does not depend on which Outcome members exist.
STALLED = "stalled"


def registry(app: App) -> CollectorRegistry:
    """The server's own registry: trainerd's collector plus the process and platform ones
    (the daemon's CPU, memory and open files; the Python build)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TrainerdCollector(app))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _read_json(path: os.PathLike) -> dict[str, Any] | None:
    try:
        d = atomic.read_json(path)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    """A gauge with one sample, or none when the value is unknown (absent, not a fake 0)."""
    g = GaugeMetricFamily(name, doc)
    if _num(value) is not None:
        g.add_metric([], float(value))
    return g


def version_number(name: str | None) -> int | None:
    return _version_number(name) if name else None


# --------------------------------------------------------------------------- the ledger
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
    return [v for (v,) in rows if _num(v) is not None]


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


# --------------------------------------------------------------------------- the model line
def current_version(layout: Layout) -> tuple[int | None, dict[str, Any]]:
    """(number of models/current, its manifest); (0, {}) while the line is the base model."""
    try:
        name = os.readlink(layout.current_model)
    except OSError:
        return (0, {}) if not os.path.lexists(layout.current_model) else (None, {})
    return version_number(name), _read_json(layout.models / name / atomic.MANIFEST) or {}


def last_publish(layout: Layout) -> float | None:
    """created_at of the newest version by number (a rollback does not change it)."""
    try:
        names = [n for n in os.listdir(layout.models) if version_number(n) is not None]
    except OSError:
        return None
    if not names:
        return None
    newest = max(names, key=lambda n: version_number(n) or 0)
    return _num((_read_json(layout.models / newest / atomic.MANIFEST) or {}).get("created_at"))


# --------------------------------------------------------------------------- the collector
class TrainerdCollector(Collector):
    def __init__(self, app: App):
        self.app = app

    def collect(self) -> Iterator[Metric]:
        yield from self._daemon()
        yield from self._queue()
        yield from self._history()
        yield from self._model()
        yield from self._active()

    def _daemon(self) -> Iterator[Metric]:
        from trainerd.server import STALE_AFTER_S

        app, layout = self.app, self.app.layout
        age = app.heartbeat_age(time.time())
        yield GaugeMetricFamily("trainerd_up", "1 while the supervisor loop's heartbeat is "
                                f"fresher than {STALE_AFTER_S:g}s, else 0", value=float(age <= STALE_AFTER_S))
        yield gauge("trainerd_heartbeat_age_seconds", "Seconds since the supervisor loop's last heartbeat",
                    age if math.isfinite(age) else None)
        info = InfoMetricFamily("trainerd_build", "trainerd version")
        info.add_metric([], {"version": __version__})
        yield info
        daemon_state = GaugeMetricFamily(
            "trainerd_daemon_state", "The supervisor's state from run/status.json (1 for the current one; "
            "no sample while no daemon holds the lock)", labels=["state"])
        live = _read_json(layout.status) if lock.holder(layout.lock) is not None else None
        if live:
            current = str(live.get("state"))
            for st in dict.fromkeys((*DAEMON_STATES, current)):
                daemon_state.add_metric([st], float(st == current))
        yield daemon_state
        wish = control.read_wish(layout)
        desired = GaugeMetricFamily("trainerd_desired_state", "The user's wish (1 for the current one)",
                                    labels=["state"])
        for d in Desired:
            desired.add_metric([d.value], float(wish.state == d))
        yield desired
        try:
            du = shutil.disk_usage(layout.base)
        except OSError:
            du = None
        yield gauge("trainerd_disk_free_bytes", "Free bytes on the base dir's filesystem", du and du.free)
        yield gauge("trainerd_disk_total_bytes", "Size of the base dir's filesystem", du and du.total)
        from trainerd.line.forgetting import (
            line_metrics,  # gate flags, backward transfer (docs/EVALS.md)
        )

        yield from line_metrics(layout)

    def _queue(self) -> Iterator[Metric]:
        counts = self.app.queue().counts()
        jobs = GaugeMetricFamily("trainerd_jobs", "Jobs per state folder now (a directory count); "
                                 "queued jobs carry a priority label, the other states none")
        for p in PRIORITIES:
            jobs.samples.append(Sample("trainerd_jobs", {"state": "queued", "priority": p},
                                       float(counts[f"queued_{p}"])))
        for st in ("active", "done", "failed"):
            jobs.samples.append(Sample("trainerd_jobs", {"state": st}, float(counts[st])))
        yield jobs

    def _history(self) -> Iterator[Metric]:
        con = open_ro(self.app.layout.state_db)
        counts: dict[str, float] = {}
        times: list[float] = []
        if con is not None:
            try:
                counts, times = ledger_counts(con), durations(con)
            except sqlite3.Error:
                counts, times = {}, []  # an old or damaged state.db: no counter samples
            finally:
                con.close()
        active = self._active_progress()
        docs = {
            "finished": ("trainerd_jobs_finished", "Jobs that finished (done events in state.db)"),
            "failed": ("trainerd_jobs_failed", "Jobs sent to failed/, rejected files included (state.db)"),
            "attempts": ("trainerd_attempts", "Training attempts started (state.db)"),
            "stalled": ("trainerd_attempts_stalled", "Attempts ended because the worker stalled (state.db)"),
            "dropped": ("trainerd_examples_dropped", "Sequences left out of finished jobs by train.overlength"),
            "truncated": ("trainerd_examples_truncated", "Sequences of finished jobs cut to train.max_seq_len"),
            "examples": ("trainerd_examples_trained", "Examples trained: finished jobs (state.db) plus the "
                         "active job's progress"),
        }
        for key, (name, doc) in docs.items():
            c = CounterMetricFamily(name, doc)
            if key in counts:
                extra = float(active[1].get("examples_done") or 0) if key == "examples" and active else 0.0
                c.add_metric([], counts[key] + extra)
            yield c
        if con is not None and counts:
            yield histogram("trainerd_job_duration_seconds", "Training time of each finished job (its "
                            "attempts summed), from state.db", times, DURATION_BUCKETS)
        else:
            yield HistogramMetricFamily("trainerd_job_duration_seconds", "Training time of each finished job "
                                        "(its attempts summed), from state.db")

    def _model(self) -> Iterator[Metric]:
        layout = self.app.layout
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

    def _active_progress(self) -> tuple[Any, dict[str, Any]] | None:
        active = self.app.queue().list(JobState.ACTIVE)
        if not active:
            return None
        return active[0], _read_json(active[0].path / PROGRESS_JSON) or {}

    def _active(self) -> Iterator[Metric]:
        app = self.app
        found = self._active_progress()
        p: dict[str, Any] = found[1] if found else {}
        aj = InfoMetricFamily("trainerd_active_job", "The job being trained")
        if found:
            ref = found[0]
            app.observe_checkpoint(ref.id, p)
            try:
                name = JobMeta.load(ref.path).original_name
            except (OSError, ValueError):
                name = ""
            aj.add_metric([], {"job_id": ref.id, "name": name})
        yield aj
        # The active job's gauges have no sample while nothing is active (absent, not 0).
        yield gauge("trainerd_step", "Optimizer step of the active job", p.get("step"))
        yield gauge("trainerd_max_steps", "Steps in the active job's epoch", p.get("max_steps"))
        yield gauge("trainerd_loss", "Last logged training loss of the active job", p.get("loss"))
        yield gauge("trainerd_grad_norm", "Last logged gradient norm of the active job", p.get("grad_norm"))
        yield gauge("trainerd_learning_rate", "Current learning rate of the active job", p.get("lr"))
        yield gauge("trainerd_tokens_per_second", "Training throughput of the active attempt", p.get("tokens_per_s"))
        yield gauge("trainerd_active_examples_done", "Examples of the active job trained so far",
                    p.get("examples_done"))
        # Not *_total: that suffix is a counter's, and this is the size of the active job.
        yield gauge("trainerd_active_examples", "Examples in the active job", p.get("examples_total"))
        ckpt_at = _num(p.get("last_checkpoint_at"))
        yield gauge("trainerd_last_checkpoint_age_seconds", "Seconds since the active job's last checkpoint",
                    None if ckpt_at is None else max(0.0, time.time() - ckpt_at))
        yield gauge("trainerd_worker_rss_bytes", "Resident memory of the training worker", p.get("rss_bytes"))
        yield gauge("trainerd_gpu_memory_bytes", "GPU memory allocated by the worker (absent on CPU)",
                    p.get("gpu_bytes"))
        yield from app.ckpt_hist.collect()

