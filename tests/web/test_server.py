"""Serving: start-up (server.json, the token, loopback), stop, no torch, and the
server the daemon itself starts."""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_base
from tests.web.helpers import auth, call, get_json
from trainerd.config import ServerConfig
from trainerd.paths import Layout
from trainerd.web.server import start_server
from trainerd.web.tokens import read_token


def test_start_writes_server_json_and_a_private_token_and_binds_loopback(layout, beat):
    h = start_server(layout, ServerConfig(port=0), beat)
    try:
        assert ServerConfig().host == "127.0.0.1"
        assert h.sockname()[0] == "127.0.0.1"
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
    code = "import sys, trainerd.web.server; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


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
        # An upload's intake events reach state.db through the daemon (the server only spools them).
        assert call(url + "api/queue?name=bad.jsonl", "POST", b"not json\n", auth(layout))[0] == 422
        wait_for(lambda: "trainerd_jobs_failed_total 1.0" in call(url + "metrics")[2].decode(), timeout=30,
                 what="the rejected upload counted from state.db")
        assert not any((layout.run / "events").iterdir())
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
