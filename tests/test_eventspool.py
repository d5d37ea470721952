"""The event spool: events from processes that must not write state.db reach the ledger
through the daemon, in order, at least once, and a bad file never stops the drain."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import make_base
from trainerd import eventspool
from trainerd.ledger import Ledger
from trainerd.paths import Layout


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout.at(make_base(tmp_path / "base", "unused-model"))


def events(layout: Layout) -> list[tuple[str, str | None]]:
    con = sqlite3.connect(layout.state_db)
    try:
        return con.execute("SELECT kind, job_id FROM events ORDER BY id").fetchall()
    finally:
        con.close()


def spooled(layout: Layout) -> list[str]:
    return sorted(p.name for p in (layout.run / eventspool.EVENTS_DIR).iterdir())


def test_drain_records_in_order_and_deletes(layout):
    eventspool.put(layout, "queued", "j1", name="a.jsonl", priority="normal", examples=3)
    eventspool.put(layout, "rejected", "j2", name="b.jsonl", reason="line 2: not JSON")
    assert not layout.state_db.exists()  # putting never touches state.db
    ledger = Ledger(layout.state_db)
    try:
        assert eventspool.drain(layout, ledger.event) == 2
        assert eventspool.drain(layout, ledger.event) == 0
    finally:
        ledger.close()
    assert events(layout) == [("queued", "j1"), ("rejected", "j2")]
    assert spooled(layout) == []


def test_a_bad_file_is_dropped_and_a_failing_sink_keeps_the_rest(layout):
    eventspool.put(layout, "queued", "j1")
    d = layout.run / eventspool.EVENTS_DIR
    (d / "00000000000000000000-1-bad.json").write_text("{not json")  # sorts first
    eventspool.put(layout, "queued", "j2")
    seen: list[str | None] = []

    def flaky(kind: str, job_id: str | None = None, **data) -> None:
        if job_id == "j2":
            raise sqlite3.OperationalError("database is locked")
        seen.append(job_id)

    assert eventspool.drain(layout, flaky) == 2  # the bad file, then j1; j2 waits
    assert seen == ["j1"] and len(spooled(layout)) == 1
    assert eventspool.drain(layout, lambda kind, job_id=None, **data: seen.append(job_id)) == 1
    assert seen == ["j1", "j2"] and spooled(layout) == []


def test_drain_without_a_spool_is_a_no_op(layout):
    assert eventspool.drain(layout, lambda *a, **k: pytest.fail("nothing to record")) == 0
