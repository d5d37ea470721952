"""The HTTP server against a real base dir: real sockets, real queue, no training.

Jobs are made with Queue.submit (and moved with Queue.claim) exactly as the daemon would;
the only thing the test controls is the heartbeat callable, which is the supervisor's part.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import chat_rows, make_base, tool, write_jsonl
from trainerd import control
from trainerd.config import QueueConfig, ServerConfig
from trainerd.jobs import JobState, Priority
from trainerd.ledger import Ledger
from trainerd.paths import Layout
from trainerd.queue import Queue
from trainerd.server import STALE_AFTER_S, read_token, start_server


class Beat:
    """The supervisor's heartbeat, as the test wants it."""

    def __init__(self) -> None:
        self.at: float = time.time()
        self.broken = False

    def __call__(self) -> float:
        if self.broken:
            raise RuntimeError("status unreadable")
        return self.at


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    # No model is loaded by anything here, so the config only needs to name one.
    return Layout.at(make_base(tmp_path / "base", "unused-model"))


@pytest.fixture
def beat() -> Beat:
    return Beat()


@pytest.fixture
def server(layout: Layout, beat: Beat):
    h = start_server(layout, ServerConfig(port=0, max_upload_mb=1), beat)
    yield h
    h.stop()


def call(url: str, method: str = "GET", data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url: str) -> dict:
    code, _h, body = call(url)
    assert code == 200, body
    return json.loads(body)


def auth(layout: Layout) -> dict[str, str]:
    return {"Authorization": f"Bearer {read_token(layout)}"}


def submit(layout: Layout, tmp: Path, name: str, rows: list[dict] | str,
           priority: Priority = Priority.NORMAL):
    src = tmp / "src" / name
    if isinstance(rows, str):
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(rows)
    else:
        write_jsonl(src, rows)
    return Queue(layout, QueueConfig()).submit(src, priority)


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# --------------------------------------------------------------------------- start-up
def test_start_writes_server_json_and_a_private_token_and_binds_loopback(layout, beat):
    h = start_server(layout, ServerConfig(port=0), beat)
    try:
        assert ServerConfig().host == "127.0.0.1"
        assert h._httpd.socket.getsockname()[0] == "127.0.0.1"
        info = json.loads((layout.run / "server.json").read_text())
        assert info == {"url": h.url, "port": h.port, "pid": os.getpid()}
        assert h.url == f"http://127.0.0.1:{h.port}/" and h.port > 0
        tok = layout.run / "token"
        assert stat.S_IMODE(tok.stat().st_mode) == 0o600
        token = read_token(layout)
        assert token and len(token) >= 32
    finally:
        h.stop()
    assert not (layout.run / "server.json").exists()  # withdrawn: nobody serves there now
    # A restart keeps the token (a browser that saved it keeps working).
    h = start_server(layout, ServerConfig(port=0), beat)
    h.stop()
    assert read_token(layout) == token


def test_stop_closes_keepalive_connections(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read()
    server.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", "/healthz")
        conn.getresponse().read()


def test_server_module_imports_no_torch():
    code = "import sys, trainerd.server; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --------------------------------------------------------------------------- reads
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


def eval_row(attempt: int, step: int, ts: float, loss: float, exact: float, final: bool = False) -> dict:
    """A row as trainerd.worker.evals writes it to evals.jsonl."""
    return {"attempt": attempt, "step": step, "ts": ts, "final": final, "loss": loss, "exact_match": exact,
            "similarity": exact, "examples": 6, "tokens": 80, "generated": 4, "complete": True,
            "seconds": 0.5, "probe_sha": "abc", "samples": [{"line": 1, "exact": True, "similarity": 1.0,
                                                             "expected": "4", "generated": "4"}]}


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


# --------------------------------------------------------------------------- /metrics
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


# --------------------------------------------------------------------------- control
def test_control_needs_the_token(server, layout):
    url = server.url + "api/control/pause"
    code, headers, _b = call(url, "POST", b"{}")
    assert code == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert call(url, "POST", b"{}", {"Authorization": "Bearer wrong"})[0] == 401
    assert call(url, "POST", b"{}", {"Authorization": f"Basic {read_token(layout)}"})[0] == 401
    assert control.read_wish(layout).state == control.Desired.RUNNING  # nothing happened

    body = json.dumps({"reason": "maintenance window"}).encode()
    code, headers, out = call(url, "POST", body, auth(layout))
    assert code == 200 and json.loads(out)["desired"] == "paused"
    assert "Access-Control-Allow-Origin" not in headers
    wish = control.read_wish(layout)
    assert wish.state == control.Desired.PAUSED and wish.reason == "maintenance window"
    assert call(server.url + "api/control/resume", "POST", None, auth(layout))[0] == 200
    assert control.read_wish(layout).state == control.Desired.RUNNING
    assert call(server.url + "api/control/stop", "POST", b"", auth(layout))[0] == 200
    assert control.read_wish(layout).state == control.Desired.STOPPED
    assert call(server.url + "api/control/pause", "POST", b"[1]", auth(layout))[0] == 400
    assert call(server.url + "api/control/pause", "POST", b'{"reason": 3}', auth(layout))[0] == 400
    assert call(server.url + "api/control/explode", "POST", b"{}", auth(layout))[0] == 404
    assert call(server.url + "api/control/pause")[0] == 405  # GET never changes anything


def test_skip_names_the_active_job(server, layout, tmp_path):
    assert call(server.url + "api/control/skip", "POST", b"{}", auth(layout))[0] == 409  # nothing active
    ref = submit(layout, tmp_path, "s.jsonl", chat_rows(4))
    claimed = Queue(layout, QueueConfig()).claim()  # what the daemon does before spawning a worker
    assert claimed is not None and claimed.id == ref.id
    code, _h, out = call(server.url + "api/control/skip", "POST", b'{"reason": "bad data"}', auth(layout))
    assert code == 200 and json.loads(out)["job_id"] == ref.id
    skip = control.read_skip(layout)
    assert skip is not None and skip.job_id == ref.id and skip.reason == "bad data"
    s = get_json(server.url + "api/status")
    assert s["job"]["id"] == ref.id and s["job"]["eta_seconds"] is None  # no worker: no ETA


# --------------------------------------------------------------------------- uploads
def test_upload_is_validated_like_an_inbox_file(server, layout):
    data = jsonl(chat_rows(5, "up"))
    url = server.url + "api/queue?name=my-data_1.jsonl&priority=high"
    assert call(url, "POST", data)[0] == 401
    code, _h, out = call(url, "POST", data, auth(layout))
    assert code == 201, out
    res = json.loads(out)
    assert res["state"] == "queued" and res["priority"] == "high" and res["examples"] == 5
    job = layout.queued("high") / res["id"]
    assert (job / "data.jsonl").read_bytes() == data
    assert json.loads((job / "job.json").read_text())["original_name"] == "my-data_1.jsonl"

    bad = b'{"text": "ok"}\n{"messages": "nope"}\n{"text": "ok"}\n'
    code, _h, out = call(server.url + "api/queue?name=bad.jsonl", "POST", bad, auth(layout))
    assert code == 422, out
    res = json.loads(out)
    assert res["state"] == "failed" and "line 2" in res["error"] and res["errors"][0]["line"] == 2
    assert (layout.failed / res["id"] / "error.json").exists()
    assert not any((layout.run / "uploads").glob("*"))  # nothing left behind


@pytest.mark.parametrize("name", ["../evil.jsonl", "a/b.jsonl", "..%2Fevil.jsonl", "x..y.jsonl", "notes.txt",
                                  ".hidden.jsonl", "", "sp%20ace.jsonl", "%00.jsonl", "a.jsonl%0A", "a" * 250 + ".jsonl"])
def test_upload_names_are_plain_file_names(server, layout, name):
    code, _h, body = call(server.url + f"api/queue?name={name}", "POST", b'{"text": "x"}\n', auth(layout))
    assert code == 400, body
    assert Queue(layout, QueueConfig()).counts()["queued"] == 0


def test_upload_bad_priority_and_missing_length(server, layout):
    url = server.url + "api/queue?name=a.jsonl&priority=urgent"
    assert call(url, "POST", b'{"text": "x"}\n', auth(layout))[0] == 400
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.putrequest("POST", "/api/queue?name=a.jsonl")
    conn.putheader("Authorization", auth(layout)["Authorization"])
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    assert conn.getresponse().status == 411


def raw_post_headers_only(port: int, path: str, headers: dict[str, str], body: bytes) -> tuple[bytes, float]:
    """Send the headers and a few body bytes, then wait for an answer without sending more."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0 = time.monotonic()
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + \
            "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        s.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        elapsed = time.monotonic() - t0
        # Then the server closes: the unread body must not be parsed as a next request.
        s.settimeout(5)
        while s.recv(4096):
            pass
        return answer, elapsed
    finally:
        s.close()


def test_upload_over_the_limit_is_413_before_the_body(server, layout):
    answer, elapsed = raw_post_headers_only(
        server.port, "/api/queue?name=big.jsonl",
        {"Authorization": auth(layout)["Authorization"], "Content-Length": str(50 * 2**30)},
        b'{"text": "the rest never comes"}\n')
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"Connection: close" in answer
    assert elapsed < 3  # answered from the header, not after a socket timeout
    assert not any((layout.run / "uploads").glob("*"))  # no temp file was even made
    # Just over the configured 1 MB is refused the same way; a token is still needed first.
    answer, _ = raw_post_headers_only(server.port, "/api/queue?name=big.jsonl",
                                      {"Content-Length": str(2**30)}, b"x")
    assert answer.startswith(b"HTTP/1.1 401")


# --------------------------------------------------------------------------- the page
def test_dashboard_page_and_assets(server):
    code, headers, body = call(server.url)
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="loss-chart"' in body and b'id="evals-loss-chart"' in body and b"/static/app.js" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "Access-Control-Allow-Origin" not in headers
    for asset, kind in (("static/app.js", "text/javascript"), ("static/style.css", "text/css")):
        code, headers, body = call(server.url + asset)
        assert code == 200 and headers["Content-Type"].startswith(kind) and body
    # No CORS preflight is ever answered, so a page elsewhere cannot send the token header.
    code, headers, _b = call(server.url + "api/control/pause", "OPTIONS")
    assert code >= 400 and "Access-Control-Allow-Origin" not in headers


def test_foreign_host_header_is_refused_on_loopback(server):
    assert call(server.url + "api/status", headers={"Host": "attacker.example:80"})[0] == 421
    assert call(server.url + "api/status", headers={"Host": f"localhost:{server.port}"})[0] == 200


# --------------------------------------------------------------------------- inside the daemon
def test_the_daemon_serves_http_and_obeys_it(tmp_path, tiny_model):
    from tests.conftest import cli, daemon_log, start_daemon, wait_for

    # No job: the daemon idles and serves (the model is only checked at start).
    base = make_base(tmp_path / "base", tiny_model, "[server]\nport = 0\n")
    layout = Layout.at(base)
    d = start_daemon(base)
    try:
        info = wait_for(lambda: (lambda i: i if i and i.get("pid") == d.pid else None)(
            json.loads((layout.run / "server.json").read_text()) if (layout.run / "server.json").exists() else None),
            timeout=30, what="run/server.json from the daemon")
        url = info["url"]
        assert call(url + "healthz")[0] == 200
        s = wait_for(lambda: (lambda s: s if s["daemon"].get("state") == "idle" else None)(get_json(url + "api/status")),
                     timeout=30, what="daemon idle")
        assert s["daemon"]["running"] and s["daemon"]["pid"] == d.pid
        assert call(url + "api/control/pause", "POST", b"{}", auth(layout))[0] == 200
        wait_for(lambda: get_json(url + "api/status")["daemon"].get("state") == "paused", timeout=30,
                 what="daemon paused")
        fams = {f.name: f for f in text_string_to_metric_families(call(url + "metrics")[2].decode())}
        states = {s.labels["state"]: s.value for s in fams["trainerd_daemon_state"].samples}
        assert states["paused"] == 1 and states["training"] == 0
        assert fams["trainerd_up"].samples[0].value == 1
        assert call(url + "api/control/stop", "POST", b"{}", auth(layout))[0] == 200
        assert d.wait(30) == 0, daemon_log(base)
        assert not (layout.run / "server.json").exists()
    finally:
        if d.poll() is None:
            cli("stop", "--base-dir", base, check=False)
            d.kill()
