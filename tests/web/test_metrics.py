"""/metrics as Prometheus and promtool read it: counters from the ledger that never go
down, gauges for what is on disk now, the model line's and the probe's numbers.

Jobs move through the real Queue with the real Ledger as its event sink, exactly as the
supervisor wires them; the server is the real one on a real socket.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import chat_rows, make_base, tool, write_jsonl
from tests.web.helpers import call, submit
from trainerd import atomic, history
from trainerd.config import QueueConfig, ServerConfig
from trainerd.jobs import Attempt, JobMeta, Outcome, Priority
from trainerd.ledger import Ledger
from trainerd.paths import Layout
from trainerd.queue import Queue
from trainerd.state import STALE_AFTER_S, DaemonState
from trainerd.web import metrics, metrics_ledger
from trainerd.web.server import start_server


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout.at(make_base(tmp_path / "base", "unused-model"))


def scrape(url: str) -> tuple[str, dict[tuple, float], dict]:
    import urllib.request

    with urllib.request.urlopen(url + "metrics", timeout=10) as r:
        text = r.read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    return text, samples, fams


def promtool_ok(text: str) -> None:
    p = subprocess.run([tool("promtool", "prometheus"), "check", "metrics"], input=text,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def train_one(q: Queue, ledger: Ledger, tmp: Path, name: str, dropped: int = 0, truncated: int = 0) -> str:
    """A job through claim, one attempt and finish, with the supervisor's `trained` event."""
    ref = q.submit(write_jsonl(tmp / name, chat_rows(4)), Priority.NORMAL)
    ref = q.claim()
    assert ref is not None
    q.record_attempt_start(ref, os.getpid(), Priority.NORMAL)
    meta = q.record_attempt_end(ref, Outcome.FINISHED, 0, None)
    meta.examples_done, meta.dropped, meta.truncated = 4, dropped, truncated
    ledger.event(history.TRAINED_EVENT, ref.id, **history.trained_event(meta, None))
    q.finish(ref)
    return ref.id


def publish(layout: Layout, name: str, job_id: str, created_at: float) -> None:
    d = layout.models / name
    d.mkdir(parents=True)
    atomic.write_json(d / atomic.MANIFEST, {"version": name, "kind": "adapter", "created_at": created_at,
                                           "jobs": [{"id": job_id}], "files": {}})
    tmp = layout.models / ".cur"
    os.symlink(name, tmp)
    os.replace(tmp, layout.current_model)


def test_counters_never_go_down_and_promtool_accepts(layout, tmp_path):
    ledger = Ledger(layout.state_db)
    q = Queue(layout, QueueConfig(), on_event=ledger.event)
    first = train_one(q, ledger, tmp_path, "a.jsonl", dropped=2, truncated=1)
    second = train_one(q, ledger, tmp_path, "b.jsonl", truncated=3)
    q.submit(write_jsonl(tmp_path / "bad.jsonl", [{"nope": 1}]), Priority.NORMAL)  # rejected: failed/
    stalled = q.claim() or q.claim()
    assert stalled is None  # nothing else queued
    ledger.event("attempt_end", first, outcome="stalled")  # issue 14's outcome, by its string
    ledger.evals(second, 1, [{"step": 5, "ts": 100.0, "final": True, "loss": 1.87, "exact_match": 0.5}])
    publish(layout, "v9999", first, 1000.0)
    publish(layout, "v10000", second, 2000.0)  # past v9999: by number, not by string

    h = start_server(layout, ServerConfig(port=0), time.time)
    try:
        text, s, fams = scrape(h.url)
        promtool_ok(text)
        assert s[("trainerd_jobs_finished_total", ())] == 2
        assert s[("trainerd_jobs_failed_total", ())] == 1
        assert s[("trainerd_attempts_total", ())] == 2
        assert s[("trainerd_attempts_stalled_total", ())] == 1
        assert s[("trainerd_examples_dropped_total", ())] == 2
        assert s[("trainerd_examples_truncated_total", ())] == 4
        assert s[("trainerd_examples_trained_total", ())] == 8
        assert s[("trainerd_job_duration_seconds_count", ())] == 2
        assert s[("trainerd_current_version", ())] == 10000
        assert s[("trainerd_last_publish_timestamp_seconds", ())] == 2000.0
        assert s[("trainerd_probe_loss", ())] == 1.87 and s[("trainerd_probe_exact_match", ())] == 0.5
        assert s[("trainerd_jobs", (("state", "done"),))] == 2
        assert ("process_resident_memory_bytes", ()) in s and "python_info" in fams

        # Requeue one done job, remove the other and the rejected one: the folders (gauges)
        # shrink, the counters do not, and a new server process reads the same counters.
        q.requeue(first)
        q.remove(second)
        for ref in q.list():
            if ref.state.value == "failed":
                q.remove(ref.id)
        text, after, _f = scrape(h.url)
        promtool_ok(text)
    finally:
        h.stop()
    h = start_server(layout, ServerConfig(port=0), time.time)
    try:
        _t, restarted, _f = scrape(h.url)
    finally:
        h.stop()
    for name in ("trainerd_jobs_finished_total", "trainerd_jobs_failed_total", "trainerd_attempts_total",
                 "trainerd_examples_trained_total"):
        assert after[(name, ())] == s[(name, ())] == restarted[(name, ())], name
    assert after[("trainerd_jobs", (("state", "done"),))] == 0
    assert after[("trainerd_jobs", (("priority", "normal"), ("state", "queued")))] == 1
    ledger.close()


def test_rollback_moves_the_version_gauge_not_the_publish_time(layout, tmp_path):
    publish(layout, "v0001", "x", 1000.0)
    publish(layout, "v0002", "y", 2000.0)
    tmp = layout.models / ".cur"
    os.symlink("v0001", tmp)
    os.replace(tmp, layout.current_model)
    assert metrics_ledger.current_version(layout)[0] == 1
    assert metrics_ledger.last_publish(layout) == 2000.0
    os.unlink(layout.current_model)
    assert metrics_ledger.current_version(layout) == (0, {})  # the base model


def test_trained_event_sums_attempts():
    meta = JobMeta(id="j", original_name="a.jsonl", sha256="0", size=1, examples=3,
                   attempts=[Attempt(number=1, started_at=10.0, ended_at=25.0),
                             Attempt(number=2, started_at=30.0, ended_at=40.0)])
    facts = history.trained_event(meta, "v0003")
    assert facts["train_seconds"] == 25.0 and facts["version"] == "v0003"
    assert json.dumps(facts)


# --------------------------------------------------------------------------- the scrape
EXPECTED_FAMILIES = {
    "trainerd_up", "trainerd_heartbeat_age_seconds", "trainerd_build_info", "trainerd_desired_state",
    "trainerd_daemon_state",
    "trainerd_jobs", "trainerd_jobs_finished", "trainerd_jobs_failed", "trainerd_attempts",
    "trainerd_examples_trained", "trainerd_active_job_info", "trainerd_step", "trainerd_max_steps",
    "trainerd_loss", "trainerd_learning_rate", "trainerd_tokens_per_second",
    "trainerd_active_examples_done", "trainerd_active_examples",
    "trainerd_last_checkpoint_age_seconds", "trainerd_worker_rss_bytes", "trainerd_gpu_memory_bytes",
    "trainerd_checkpoint_save_seconds", "trainerd_disk_free_bytes",
}


def test_prometheus_metrics(server, layout, tmp_path, beat):
    submit(layout, tmp_path, "a.jsonl", chat_rows(4), Priority.HIGH)
    submit(layout, tmp_path, "b.jsonl", chat_rows(4), Priority.LOW)
    submit(layout, tmp_path, "c.jsonl", "not json\n")
    code, headers, body = call(server.url + "metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams.keys() >= EXPECTED_FAMILIES, EXPECTED_FAMILIES - fams.keys()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("trainerd_up", ())] == 1.0
    assert samples[("trainerd_jobs", (("priority", "high"), ("state", "queued")))] == 1
    assert samples[("trainerd_jobs", (("priority", "low"), ("state", "queued")))] == 1
    assert samples[("trainerd_jobs", (("state", "failed"),))] == 1  # no empty priority label
    assert not fams["trainerd_jobs_failed"].samples  # no state.db yet: no counter sample, not a fake 0
    assert samples[("trainerd_desired_state", (("state", "running"),))] == 1
    assert samples[("trainerd_disk_free_bytes", ())] > 0
    assert not fams["trainerd_loss"].samples  # nothing active: absent, not a fake 0
    assert fams["trainerd_checkpoint_save_seconds"].type == "histogram"

    beat.at = time.time() - STALE_AFTER_S - 1
    down = {f.name: f for f in text_string_to_metric_families(call(server.url + "metrics")[2].decode())}
    assert down["trainerd_up"].samples[0].value == 0.0

    p = subprocess.run([tool("promtool", "prometheus"), "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_daemon_state_set_names_every_state_the_enum_knows():
    assert set(metrics.DAEMON_STATES) == {s.value for s in DaemonState}
    assert {"error", "consolidating"} <= set(metrics.DAEMON_STATES)
