"""[publish] hooks: a real command and a real HTTP receiver (127.0.0.1), fired once per
change of models/current, retried, time-bounded, recorded; never in training's way."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import wait_for
from trainerd import atomic
from trainerd.config import Config
from trainerd.ledger import Ledger
from trainerd.paths import Layout
from trainerd.publish import PUBLISH_JSON, Publisher
from trainerd.worker.models import set_current

# Appends its environment and stdin to the file named by its argument: one line per run.
RECORDER = (
    "import json, os, sys\n"
    "env = {k: v for k, v in os.environ.items() if k.startswith('TRAINERD_') and k != 'TRAINERD_PARENT_PID'}\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write(json.dumps({'env': env, 'stdin': json.loads(sys.stdin.read())}) + '\\n')\n"
)


@contextlib.contextmanager
def receiver(status: int = 200) -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP server that keeps every JSON body POSTed to it."""
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(json.loads(body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/hook", got
    finally:
        srv.shutdown()
        srv.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once it is closed


def recorder(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    out = tmp_path / "calls.jsonl"
    return [sys.executable, str(script), str(out)], out


def calls(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def fake_version(layout: Layout, name: str, parent: str) -> None:
    d = layout.models / name
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"x")
    atomic.write_manifest(d, {"version": name, "parent": parent, "kind": "adapter", "base": "/m",
                              "jobs": [{"id": f"job-{name}", "name": f"{name}.jsonl", "examples": 3}]})
    set_current(layout, name)


def config(tmp_path: Path, **publish) -> Config:
    return Config.model_validate({"base_model": "/m", "publish": {"backoff_seconds": [0.05], **publish}})


def settle(pub: Publisher, done: callable, what: str) -> None:
    wait_for(lambda: (pub.tick(), done())[1], timeout=60, interval=0.05, what=what)


def test_command_and_webhook_fire_once_per_version_and_not_again_after_a_restart(tmp_path):
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    cmd, out = recorder(tmp_path)
    events: list[tuple] = []
    with receiver() as (url, got):
        cfg = config(tmp_path, command=cmd, webhook=url)
        pub = Publisher(layout, cfg, lambda kind, job, **d: events.append((kind, d)))
        for _ in range(5):
            pub.tick()  # the line is still the base model: nothing has changed
        assert calls(out) == [] and got == []
        fake_version(layout, "v0001", "base")
        settle(pub, lambda: len(pub.notified) == 2, "both hooks for v0001")
        fake_version(layout, "v0002", "v0001")
        settle(pub, lambda: set(pub.notified.values()) == {"v0002"}, "both hooks for v0002")
        set_current(layout, "v0001")  # a rollback, e.g. by the CLI while the daemon runs
        settle(pub, lambda: set(pub.notified.values()) == {"v0001"} and len(events) == 6, f"the rollback {pub.status()} {events}")
        for _ in range(10):
            pub.tick()
        pub.stop()
        again = Publisher(layout, cfg, None)  # a restarted daemon: nothing new to say
        for _ in range(10):
            again.tick()
        again.stop()

    ran = calls(out)
    assert [c["env"]["TRAINERD_VERSION"] for c in ran] == ["v0001", "v0002", "v0001"]
    assert [b["version"] for b in got] == ["v0001", "v0002", "v0001"]
    assert [b["event"] for b in got] == ["publish", "publish", "rollback"]
    assert ran[1]["env"] == {"TRAINERD_VERSION": "v0002", "TRAINERD_VERSION_DIR": str(layout.models / "v0002"),
                             "TRAINERD_PARENT_VERSION": "v0001", "TRAINERD_BASE_DIR": str(layout.base)}
    assert ran[1]["stdin"]["jobs"][0]["id"] == "job-v0002" and ran[1]["stdin"] == got[1]
    assert all(kind == "publish_hook" and d["ok"] and d["attempts"] == 1 for kind, d in events)
    status = json.loads((layout.run / PUBLISH_JSON).read_text())
    assert status["last"]["webhook"]["ok"] and status["notified"] == {"command": "v0001", "webhook": "v0001"}


def test_failing_and_hanging_hooks_are_retried_bounded_and_recorded(tmp_path):
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    cfg = config(tmp_path, command=[sys.executable, "-c", "import time; time.sleep(60)"], timeout_seconds=0.5,
                 webhook=f"http://127.0.0.1:{closed_port()}/", retries=2)
    events: list[tuple] = []
    pub = Publisher(layout, cfg, lambda kind, job, **d: events.append((kind, d)))
    fake_version(layout, "v0001", "base")
    settle(pub, lambda: len(events) == 2, "both hooks to give up")
    pub.stop()
    by = {d["hook"]: d for _, d in events}
    assert by["command"]["attempts"] == 3 and "killed" in by["command"]["error"]
    assert by["webhook"]["attempts"] == 3 and not by["webhook"]["ok"]
    assert "Connection refused" in by["webhook"]["error"] or "refused" in by["webhook"]["error"].lower()


@pytest.mark.parametrize("hook", ["command", "webhook"])
def test_a_hook_that_raises_inside_is_an_outcome_not_a_crash(tmp_path, hook, monkeypatch):
    import trainerd.publish as publish

    def boom(*a, **k):
        raise RuntimeError("bug in a hook")

    monkeypatch.setattr(publish, "run_command" if hook == "command" else "post_webhook", boom)
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    cfg = config(tmp_path, **({"command": ["true"]} if hook == "command" else {"webhook": "http://127.0.0.1:1/"}),
                 retries=0)
    events: list[tuple] = []
    pub = Publisher(layout, cfg, lambda kind, job, **d: events.append(d))
    fake_version(layout, "v0001", "base")
    settle(pub, lambda: events, "the outcome")
    pub.stop()
    assert events[0]["error"] == "RuntimeError: bug in a hook" and not events[0]["ok"]


def test_outcomes_reach_the_ledger_through_the_supervisor_sink(tmp_path):
    """The sink the supervisor passes is its ledger's writer: rows land in state.db."""
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    ledger = Ledger(layout.state_db)
    pub = Publisher(layout, config(tmp_path, command=["true"]), ledger.event)
    fake_version(layout, "v0001", "base")
    settle(pub, lambda: pub.notified, "the command")
    pub.stop()
    rows = ledger._db.execute("SELECT kind, data FROM events WHERE kind = 'publish_hook'").fetchall()
    ledger.close()
    assert len(rows) == 1 and json.loads(rows[0][1])["version"] == "v0001"
