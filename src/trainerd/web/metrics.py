"""Prometheus metrics for /metrics, computed from disk at scrape time (no global registry).

Two kinds of numbers, kept apart so `rate()` and `promtool check metrics` read them right:
- Gauges are what is on disk now: jobs per folder, the active job's progress, the current
  version. Removing or requeueing a job lowers them, as it should.
- Counters only ever grow: they count events in state.db (the ledger), which survive a
  restart, a requeue and a removal. Deleting state.db resets them, which Prometheus reads
  as a counter reset (exactly what it is). Without a usable state.db they have no sample.

Every query uses an index (events_kind, the evals primary key); nothing here reads every
job.json, so a scrape costs the same after 10,000 jobs as after one. The queries and the
line's numbers are in metrics_ledger.py; this module is the collector and the route.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from trainerd import __version__, control, lock
from trainerd.control import Desired
from trainerd.jobs import PROGRESS_JSON, JobMeta, JobState
from trainerd.line import forgetting
from trainerd.paths import PRIORITIES
from trainerd.state import STALE_AFTER_S, DaemonState
from trainerd.web.common import num, read_json_obj
from trainerd.web.metrics_ledger import gauge, history_metrics, model_metrics
from trainerd.web.reads import Reader

# The supervisor's states (run/status.json "state"), for a state-set metric: every one the
# enum knows, and an unknown one (a newer daemon's) is reported too.
DAEMON_STATES = tuple(s.value for s in DaemonState)

router = APIRouter()


def registry(reader: Reader) -> CollectorRegistry:
    """The server's own registry: trainerd's collector plus the process and platform ones
    (the daemon's CPU, memory and open files; the Python build)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TrainerdCollector(reader))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text exposition format)",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def prometheus(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


class TrainerdCollector(Collector):
    def __init__(self, reader: Reader):
        self.reader = reader

    def collect(self) -> Iterator[Metric]:
        yield from self._daemon()
        yield from self._queue()
        found = self._active_progress()
        yield from history_metrics(self.reader.layout, found[1] if found else None)
        yield from model_metrics(self.reader.layout)
        yield from self._active(found)

    def _daemon(self) -> Iterator[Metric]:
        r, layout = self.reader, self.reader.layout
        age = r.heartbeat_age(time.time())
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
        live = read_json_obj(layout.status) if lock.holder(layout.lock) is not None else None
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
        yield from forgetting.line_metrics(layout)  # gate flags, backward transfer (docs/EVALS.md)

    def _queue(self) -> Iterator[Metric]:
        counts = self.reader.queue().counts()
        jobs = GaugeMetricFamily("trainerd_jobs", "Jobs per state folder now (a directory count); "
                                 "queued jobs carry a priority label, the other states none")
        for p in PRIORITIES:
            jobs.samples.append(Sample("trainerd_jobs", {"state": "queued", "priority": p},
                                       float(counts[f"queued_{p}"])))
        for st in ("active", "done", "failed"):
            jobs.samples.append(Sample("trainerd_jobs", {"state": st}, float(counts[st])))
        yield jobs

    def _active_progress(self) -> tuple[Any, dict[str, Any]] | None:
        active = self.reader.queue().list(JobState.ACTIVE)
        if not active:
            return None
        return active[0], read_json_obj(active[0].path / PROGRESS_JSON) or {}

    def _active(self, found: tuple[Any, dict[str, Any]] | None) -> Iterator[Metric]:
        p: dict[str, Any] = found[1] if found else {}
        aj = InfoMetricFamily("trainerd_active_job", "The job being trained")
        if found:
            ref = found[0]
            self.reader.observe_checkpoint(ref.id, p)
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
        ckpt_at = num(p.get("last_checkpoint_at"))
        yield gauge("trainerd_last_checkpoint_age_seconds", "Seconds since the active job's last checkpoint",
                    None if ckpt_at is None else max(0.0, time.time() - ckpt_at))
        yield gauge("trainerd_worker_rss_bytes", "Resident memory of the training worker", p.get("rss_bytes"))
        yield gauge("trainerd_gpu_memory_bytes", "GPU memory allocated by the worker (absent on CPU)",
                    p.get("gpu_bytes"))
        yield from self.reader.ckpt_hist.collect()
