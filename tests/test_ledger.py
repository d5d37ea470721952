"""state.db is history, not truth: a damaged one is set aside and rebuilt from jobs/."""

from __future__ import annotations

import os
import signal
import sqlite3

import pytest

from tests.conftest import cli, daemon_log, start_daemon, wait_for
from trainerd.config import QueueConfig
from trainerd.ledger import Ledger, open_or_rebuild
from trainerd.paths import Layout
from trainerd.queue import Queue


def _job(layout: Layout, tmp_path) -> str:
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "a"}\n')
    return Queue(layout, QueueConfig(settle_seconds=0)).submit(src).id


def test_a_healthy_state_db_is_kept_as_it_is(tmp_path):
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    Ledger(layout.state_db).event("hello")
    led, note = open_or_rebuild(layout.state_db, layout.jobs)
    assert note is None and [e["kind"] for e in led.events()] == ["hello"]


def test_a_damaged_state_db_is_set_aside_and_rebuilt_from_the_jobs(tmp_path):
    """Found by the power-cut campaign's check (issue 20): a state.db that did not open
    left the daemon without history ("state.db unavailable") for good."""
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    job = _job(layout, tmp_path)
    layout.state_db.write_bytes(b"SQLite format 3\0" + os.urandom(8192))
    led, note = open_or_rebuild(layout.state_db, layout.jobs)
    assert note and "rebuilt" in note and "1 jobs" in note
    assert {(e["job_id"], e["kind"]) for e in led.events()} >= {(job, "submitted"), (job, "rebuilt")}
    assert [p.name for p in layout.base.glob("state.db.corrupt-*")]
    with sqlite3.connect(layout.state_db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow
def test_the_daemon_logs_the_rebuild_and_runs(base, tmp_path):
    layout = Layout.at(base)
    _job(layout, tmp_path)
    layout.state_db.write_bytes(b"not a database at all" * 100)
    cli("pause", "--base-dir", base)  # only the start-up is looked at: nothing trains
    d = start_daemon(base)
    try:
        wait_for(lambda: "rebuilt from" in daemon_log(base), timeout=60, what="the rebuild note")
        wait_for(lambda: layout.status.exists(), timeout=60, what="status.json")
    finally:
        d.send_signal(signal.SIGTERM)
        assert d.wait(60) == 0, daemon_log(base)
