"""The read endpoints against a real base dir: real sockets, real queue, no training."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.conftest import chat_rows
from tests.web.helpers import call, eval_row, get_json, submit
from trainerd.config import QueueConfig
from trainerd.jobs import JobState, Priority
from trainerd.ledger import Ledger
from trainerd.queue import Queue
from trainerd.state import STALE_AFTER_S


def test_healthz_follows_the_heartbeat(server, beat):
    code, _h, body = call(server.url + "healthz")
    assert code == 200 and json.loads(body)["ok"] is True
    beat.at = time.time() - STALE_AFTER_S - 1
    code, _h, body = call(server.url + "healthz")
    assert code == 503 and json.loads(body)["heartbeat_age"] > STALE_AFTER_S
    beat.at = time.time()
    assert call(server.url + "healthz")[0] == 200
    beat.broken = True  # an unreadable heartbeat is a stale one, not a 500
    assert call(server.url + "healthz")[0] == 503


def test_status_jobs_and_models(server, layout, tmp_path):
    good = submit(layout, tmp_path, "good.jsonl", chat_rows(6))
    high = submit(layout, tmp_path, "urgent.jsonl", chat_rows(3), Priority.HIGH)
    bad = submit(layout, tmp_path, "bad.jsonl", '{"text": "fine"}\n{"text": broken\n')
    assert bad.state == JobState.FAILED

    s = get_json(server.url + "api/status")
    assert s["queue"]["queued"] == 2 and s["queue"]["queued_high"] == 1 and s["queue"]["failed"] == 1
    assert {j["id"] for j in s["queued"]} == {good.id, high.id}
    assert "line 2" in s["failed"][0]["reason"]
    assert s["daemon"]["running"] is False  # no daemon holds the lock in this test
    assert s["desired"]["state"] == "running"
    assert s["model"]["version"] == "base" and s["job"] is None
    assert s["disk"]["free_bytes"] == pytest.approx(shutil.disk_usage(layout.base).free, rel=0.05)
    assert s["health"]["ok"] is True

    all_jobs = get_json(server.url + "api/jobs")
    # What will train, in claim order (high first), then what finished, newest finish first.
    assert all_jobs["total"] == 3 and [j["id"] for j in all_jobs["jobs"]] == [high.id, good.id, bad.id]
    failed = get_json(server.url + "api/jobs?state=failed")["jobs"]
    assert [j["id"] for j in failed] == [bad.id]
    assert call(server.url + "api/jobs?state=bogus")[0] == 400
    assert len(get_json(server.url + "api/jobs?limit=1")["jobs"]) == 1

    one = get_json(server.url + f"api/jobs/{good.id}")
    assert one["job"]["id"] == good.id and one["job"]["attempts"] == []
    assert one["summary"]["examples"] == 6 and one["summary"]["state"] == "queued"
    err = get_json(server.url + f"api/jobs/{bad.id}")["error"]
    assert err["errors"][0]["line"] == 2

    assert get_json(server.url + "api/models") == {"current": {"version": "base"}, "versions": [],
                                                   "matrix": {"jobs": [], "names": {}, "versions": []},
                                                   "gate_overrides": {}}


@pytest.mark.parametrize("path", [
    "api/jobs/nope",
    "api/jobs/..%2F..%2Ftrainerd.toml",
    "api/jobs/../../trainerd.toml",
    "api/jobs/20260101T000000-000000-..",
    "api/jobs/20260101T000000-000000-x%2F..%2F..",
    "api/jobs/20260101T000000-000000-" + "a" * 300,
    "api/metrics/20260101T000000-000000-missing",
    "api/metrics/..",
    "static/../server.py",
    "static/index.html/../../server.py",
    "nothing-here",
])


def test_unknown_paths_and_bad_ids_are_404(server, path):
    code, _h, body = call(server.url + path)
    assert code == 404, body


def test_metrics_series_from_state_db_then_metrics_jsonl(server, layout, tmp_path):
    ref = submit(layout, tmp_path, "curve.jsonl", chat_rows(8))
    empty = get_json(server.url + f"api/metrics/{ref.id}")
    assert empty["count"] == 0 and empty["source"] is None
    # Attempt 1 ended: the supervisor copied its rows into state.db (same call it makes).
    ledger = Ledger(layout.state_db)
    ledger.metrics(ref.id, 1, [{"step": s, "ts": 1000.0 + s, "loss": 3.0 - s / 10, "lr": 1e-3,
                                "tokens_per_s": 50.0, "examples_done": 2 * s} for s in (1, 2, 3)])
    ledger.close()
    m = get_json(server.url + f"api/metrics/{ref.id}")
    assert m["source"] == "state.db" and m["series"]["step"] == [1, 2, 3]
    assert m["series"]["loss"] == pytest.approx([2.9, 2.8, 2.7])
    # Attempt 2 is running: only the worker's metrics.jsonl has it (rows as train.py writes
    # them; attempt-1 rows there too, which state.db already covers). The last line is cut.
    lines = [{"attempt": a, "step": s, "ts": 2000.0 + s, "loss": 2.0 - s / 100, "lr": 1e-3,
              "tokens_per_s": 60.0, "examples_done": 2 * s} for a, s in ((1, 1), (1, 2), (1, 3), (2, 4), (2, 5))]
    with open(ref.path / "metrics.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in lines) + '{"attempt": 2, "step": 6, "lo')
    m = get_json(server.url + f"api/metrics/{ref.id}")
    assert m["source"] == "state.db+metrics.jsonl"
    assert m["series"]["step"] == [1, 2, 3, 4, 5] and m["series"]["attempt"] == [1, 1, 1, 2, 2]
    assert m["series"]["loss"][:3] == pytest.approx([2.9, 2.8, 2.7])  # attempt 1 from state.db
    with open(ref.path / "metrics.jsonl", "a") as f:
        f.write('ss": 1.9, "ts": 2006.0}\n')  # the writer finishes the line
    m = get_json(server.url + f"api/metrics/{ref.id}")
    assert m["series"]["step"][-1] == 6 and m["total_points"] == 6
    few = get_json(server.url + f"api/metrics/{ref.id}?max_points=10")
    assert few["count"] == 6
    # state.db is history: without it the job's own file gives the whole curve.
    for p in layout.base.glob("state.db*"):
        p.unlink()
    m = get_json(server.url + f"api/metrics/{ref.id}")
    assert m["source"] == "metrics.jsonl" and m["series"]["step"] == [1, 2, 3, 4, 5, 6]


def test_evals_trend_across_jobs_from_state_db_and_the_active_job(server, layout, tmp_path):
    empty = get_json(server.url + "api/evals")
    assert empty == {"source": None, "count": 0, "series": empty["series"], "latest": None}
    assert call(server.url + "api/evals?limit=x")[0] == 400
    # Two jobs finished earlier: the supervisor copied their evals into state.db.
    ledger = Ledger(layout.state_db)
    ledger.evals("20260101T000000-000001-old", 1, [eval_row(1, 4, 1000.0, 2.5, 0.0),
                                                   eval_row(1, 8, 1010.0, 2.0, 0.25, final=True)])
    ledger.evals("20260102T000000-000001-newer", 2, [eval_row(2, 8, 2000.0, 1.5, 0.5, final=True)])
    ledger.close()
    # The active job's running attempt: only its evals.jsonl has it (the last line is cut).
    ref = submit(layout, tmp_path, "live.jsonl", chat_rows(8))
    Queue(layout, QueueConfig()).claim()
    active = layout.active / ref.id
    with open(active / "evals.jsonl", "w") as f:
        f.write(json.dumps(eval_row(1, 3, 3000.0, 1.2, 0.75)) + "\n" + '{"attempt": 1, "step": 6, "lo')
    e = get_json(server.url + "api/evals")
    assert e["source"] == "state.db+evals.jsonl" and e["count"] == 4
    s = e["series"]
    assert s["job_id"] == ["20260101T000000-000001-old"] * 2 + ["20260102T000000-000001-newer", ref.id]
    assert s["ts"] == [1000.0, 1010.0, 2000.0, 3000.0] and s["final"] == [False, True, True, False]
    assert s["loss"] == [2.5, 2.0, 1.5, 1.2] and s["exact_match"] == [0.0, 0.25, 0.5, 0.75]
    assert "samples" not in s  # answers only for the newest eval
    assert e["latest"]["job_id"] == ref.id and e["latest"]["samples"][0]["generated"] == "4"
    assert get_json(server.url + "api/evals?limit=2")["series"]["ts"] == [2000.0, 3000.0]
    # state.db is history: without it, the running attempt's own file still answers.
    for p in layout.base.glob("state.db*"):
        p.unlink()
    e = get_json(server.url + "api/evals")
    assert e["source"] == "evals.jsonl" and e["series"]["job_id"] == [ref.id]
