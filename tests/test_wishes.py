"""Dashboard edits as wishes: the server only writes control/actions/, the daemon's
loop carries them out with the queue's and the line's own functions."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import chat_rows, make_base, write_jsonl
from trainerd import wishes
from trainerd.config import QueueConfig, ServerConfig
from trainerd.jobs import Priority
from trainerd.paths import Layout
from trainerd.queue import Queue
from trainerd.web.server import start_server
from trainerd.web.tokens import read_token


@pytest.fixture
def layout(tmp_path) -> Layout:
    return Layout.at(make_base(tmp_path / "base", "unused-model"))


def post(url: str, body: dict, token: str | None) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_server_writes_a_wish_and_moves_nothing(layout, tmp_path):
    ref = Queue(layout, QueueConfig()).submit(write_jsonl(tmp_path / "a.jsonl", chat_rows(2)), Priority.LOW)
    h = start_server(layout, ServerConfig(port=0), time.time)
    try:
        url = h.url + "api/control/move"
        assert post(url, {"job_id": ref.id, "priority": "high"}, None)[0] == 401
        assert post(url, {"job_id": ref.id, "priority": "urgent"}, read_token(layout))[0] == 400
        assert post(url, {"job_id": "../../etc", "priority": "high"}, read_token(layout))[0] == 400
        assert post(h.url + "api/control/rollback", {}, read_token(layout))[0] == 400
        code, body = post(url, {"job_id": ref.id, "priority": "high"}, read_token(layout))
        assert code == 202 and body["state"] == "pending"
        assert Queue(layout, QueueConfig()).find(ref.id).priority == Priority.LOW  # not moved by the web
        with urllib.request.urlopen(h.url + body["outcome"].lstrip("/"), timeout=10) as r:
            assert json.loads(r.read())["state"] == "pending"
        # What the daemon's loop does each tick:
        assert wishes.carry_out(layout, Queue(layout, QueueConfig())) == 1
        assert Queue(layout, QueueConfig()).find(ref.id).priority == Priority.HIGH
        with urllib.request.urlopen(h.url + body["outcome"].lstrip("/"), timeout=10) as r:
            done = json.loads(r.read())
        assert done["state"] == "done" and done["result"]["priority"] == "high"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(h.url + "api/control/actions/nope..", timeout=10)
    finally:
        h.stop()


def test_a_refused_wish_says_why_and_the_rest_go_on(layout, tmp_path):
    q = Queue(layout, QueueConfig())
    ref = q.submit(write_jsonl(tmp_path / "a.jsonl", chat_rows(2)), Priority.NORMAL)
    first = wishes.request(layout, "remove", job_id="20260101T000000-000000-missing")
    second = wishes.request(layout, "remove", job_id=ref.id)
    third = wishes.request(layout, "rollback", version="v0007")
    assert wishes.carry_out(layout, q) == 3
    assert wishes.outcome(layout, first["id"])["state"] == "failed"
    assert wishes.outcome(layout, second["id"])["state"] == "done"
    out = wishes.outcome(layout, third["id"])
    assert out["state"] == "failed" and "v0007" in out["error"]
    assert wishes.pending(layout) == []
    with pytest.raises(wishes.WishError):
        wishes.request(layout, "explode", job_id=ref.id)


def test_an_unexpected_error_is_answered_once_not_retried_forever(layout, monkeypatch):
    q = Queue(layout, QueueConfig())
    w = wishes.request(layout, "remove", job_id="20260101T000000-000000-x")

    def broken(job_id: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(q, "remove", broken)
    assert wishes.carry_out(layout, q) == 1
    assert "Input/output error" in wishes.outcome(layout, w["id"])["error"]
    assert wishes.carry_out(layout, q) == 0
