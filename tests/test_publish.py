"""[publish] hooks: a real command and a real HTTP receiver (127.0.0.1), fired once per
change of models/current, retried, time-bounded, recorded; never in training's way."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    calls,
    chat_rows,
    cli,
    closed_port,
    make_base,
    receiver,
    recorder,
    wait_for,
    write_jsonl,
)
from trainerd import atomic
from trainerd.config import Config
from trainerd.ledger import Ledger
from trainerd.line.refs import set_current
from trainerd.paths import Layout
from trainerd.publish import Publisher


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
    status = json.loads(layout.publish_json.read_text())
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


# ------------------------------------------------------------------ a real daemon
@pytest.mark.slow
def test_a_daemon_fires_each_hook_once_per_published_version(trained_line):
    base = trained_line["base"]
    ran, got = trained_line["calls"], trained_line["webhook"]
    assert [c["env"]["TRAINERD_VERSION"] for c in ran] == ["v0001", "v0002"]
    assert [b["version"] for b in got] == ["v0001", "v0002"]
    assert [c["env"]["TRAINERD_PARENT_VERSION"] for c in ran] == ["base", "v0001"]
    v2 = got[1]
    assert v2["event"] == "publish" and v2["version_dir"] == str(base / "models" / "v0002") and ran[1]["stdin"] == v2
    job = v2["jobs"][-1]
    assert job["name"] == "two.jsonl" and job["last_loss"] < job["first_loss"]
    assert job["probe"]["loss"] is not None  # the job's final probe eval
    status = json.loads(cli("status", "--base-dir", base, "--json").stdout)["publish"]
    assert status["notified"] == {"command": "v0002", "webhook": "v0002"}
    assert all(o["ok"] for o in status["last"].values())
    ledger = Ledger(base / "state.db")
    rows = [e for e in ledger.events(limit=1000) if e["kind"] == "publish_hook"]
    ledger.close()
    assert len(rows) == 4


@pytest.mark.slow
def test_failing_hooks_change_nothing_in_training(tmp_path, tiny_model, trained_line):
    """A hook that fails and one that cannot connect: the job trains and publishes exactly as
    with working hooks (the same weights as trained_line's v0001), and the failures are
    reported in status, state.db and the log."""
    from safetensors.torch import load_file

    extra = ("[publish]\ncommand = [\"false\"]\n"
             f"webhook = \"http://127.0.0.1:{closed_port()}/\"\nretries = 1\nbackoff_seconds = [0.1]\n")
    base = make_base(tmp_path / "base", tiny_model, extra)
    (base / "probe.jsonl").write_bytes((trained_line["base"] / "probe.jsonl").read_bytes())
    write_jsonl(base / "inbox" / "one.jsonl", chat_rows(16, "one"))
    p = cli("run", "--base-dir", base, "--once")
    layout = Layout.at(base)
    assert os.readlink(layout.current_model) == "v0001"
    (job,) = os.listdir(layout.done)
    meta = json.loads((layout.done / job / "job.json").read_text())
    assert [a["outcome"] for a in meta["attempts"]] == ["finished"]
    mine = load_file(str(layout.models / "v0001" / "adapter_model.safetensors"))
    theirs = load_file(str(trained_line["base"] / "models" / "v0001" / "adapter_model.safetensors"))
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)

    status = json.loads(cli("status", "--base-dir", base, "--json").stdout)["publish"]
    assert {n: (o["ok"], o["attempts"]) for n, o in status["last"].items()} == \
        {"command": (False, 2), "webhook": (False, 2)}
    assert "exit 1" in status["last"]["command"]["error"]
    assert "publish command for v0001 failed after 2 attempt(s)" in p.stderr
    assert "publish command: v0001 failed (exit 1)" in cli("status", "--base-dir", base).stdout


@pytest.mark.parametrize("work_done", [False, True])
def test_a_stop_cuts_retries_short_but_an_exit_with_the_work_done_lets_them_run(tmp_path, work_done):
    # A daemon told to go (signal, `trainerd stop`) gives a failing hook its attempt in
    # flight and no more; `run --once` ending on an empty queue lets the retries run, so
    # that a cron job's hook is not judged on its first try.
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    pub = Publisher(layout, config(tmp_path, command=["false"], retries=2, backoff_seconds=[0.3]))
    fake_version(layout, "v0001", "base")
    pub.tick()  # the change is seen and submitted; the first attempt fails at once
    pub.stop(retries=work_done)
    last = pub.status()["last"]["command"]
    assert (last["ok"], last["attempts"]) == ((False, 3) if work_done else (False, 1))
    assert ("cut short by the daemon stopping" in last["error"]) is not work_done
