"""Control with the token: the daemon's wish and a skip."""

from __future__ import annotations

import json

from tests.conftest import chat_rows
from tests.web.helpers import auth, call, get_json, submit
from trainerd import control
from trainerd.config import QueueConfig
from trainerd.queue import Queue
from trainerd.web.tokens import read_token


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
