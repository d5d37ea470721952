"""When housework runs: once per calendar day across restarts, clock jumps and reboots
(with an injected clock), consolidation only when idle; the daily task as a real process."""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import pytest
from pydantic import ValidationError

from trainerd import atomic
from trainerd.config import ConsolidateConfig, ScheduleConfig
from trainerd.line.refs import set_current
from trainerd.line.versions import Line, current_name, line_state
from trainerd.paths import Layout
from trainerd.schedule import (
    CONSOLIDATE,
    DAILY,
    Clock,
    Housekeeping,
    Schedule,
    consolidation_reason,
)

AT = dt.time(3, 0)
D = dt.date(2026, 11, 20)


class FakeClock(Clock):
    """Wall clock and boot clock that tests move independently, like NTP and reality."""

    def __init__(self, wall: dt.datetime, boot: str = "boot-1"):
        self.wall, self.elapsed, self.boot_name = wall, 1000.0, boot
        super().__init__(now=lambda: self.wall, mono=lambda: self.elapsed, boot=lambda: self.boot_name)

    def set_wall(self, day: dt.date, hhmm: str) -> None:
        self.wall = dt.datetime.combine(day, dt.time.fromisoformat(hhmm))

    def pass_real(self, hours: float, wall_too: bool = True) -> None:
        self.elapsed += hours * 3600
        if wall_too:
            self.wall += dt.timedelta(hours=hours)


def day(n: int) -> dt.date:
    return D + dt.timedelta(days=n)


def run_if_due(s: Schedule) -> bool:
    if s.due(DAILY, AT):
        s.mark(DAILY, s.stamp())
        return True
    return False


def test_once_per_calendar_day_across_restarts(tmp_path):
    clock = FakeClock(dt.datetime.combine(D, dt.time(2, 0)))
    path = tmp_path / "schedule.json"
    s = Schedule(path, clock)
    assert not run_if_due(s)  # first start, before 03:00
    clock.pass_real(1)  # 03:00
    assert run_if_due(s)
    for _ in range(20):  # the rest of the day, restarting every hour
        clock.pass_real(1)
        assert not run_if_due(Schedule(path, clock)), clock.wall
    clock.set_wall(day(1), "03:00")  # 24 h after the run
    clock.pass_real(2, wall_too=False)
    assert run_if_due(Schedule(path, clock))
    assert atomic.read_json(path)[DAILY]["ran_on"] == day(1).isoformat()


def test_a_missed_day_runs_at_the_next_start_once(tmp_path):
    clock = FakeClock(dt.datetime.combine(D, dt.time(3, 5)))
    path = tmp_path / "schedule.json"
    assert run_if_due(Schedule(path, clock))
    # Down for three days; back (after a reboot) at 01:00, before the daily time.
    clock.boot_name, clock.elapsed = "boot-2", 50.0
    clock.set_wall(day(3), "01:00")
    assert run_if_due(Schedule(path, clock))  # the missed work runs now ...
    clock.pass_real(3)
    assert not run_if_due(Schedule(path, clock))  # ... and stands for today's 03:00 too
    # Yesterday done, today's time not yet come: waits (no catch-up run at midnight).
    clock.set_wall(day(4), "00:30")
    clock.pass_real(21, wall_too=False)
    assert not run_if_due(Schedule(path, clock))


def test_clock_jumps_never_run_it_twice_nor_skip_it_for_good(tmp_path):
    clock = FakeClock(dt.datetime.combine(D, dt.time(3, 0)))
    path = tmp_path / "schedule.json"
    assert run_if_due(Schedule(path, clock))

    # Backward by a day (now "yesterday" 22:00): the marker from "the future" counts as today.
    clock.set_wall(day(-1), "22:00")
    clock.pass_real(1, wall_too=False)
    assert not run_if_due(Schedule(path, clock))
    clock.set_wall(day(-1), "23:59")
    assert not run_if_due(Schedule(path, clock))

    # Forward by two days, only hours of real time after the run: not again yet.
    clock.set_wall(day(2), "09:00")
    clock.pass_real(2, wall_too=False)
    assert not run_if_due(Schedule(path, clock))
    clock.pass_real(17)  # min_gap_hours (20) of real time since the run
    assert run_if_due(Schedule(path, clock))
    clock.pass_real(1)
    assert not run_if_due(Schedule(path, clock))

    # A dead RTC after a reboot: the wall clock says a year ago. Not forever: the next
    # 03:00 of that (wrong) calendar runs it.
    clock.boot_name, clock.elapsed = "boot-2", 30.0
    clock.set_wall(day(-365), "12:00")
    assert not run_if_due(Schedule(path, clock))
    clock.set_wall(day(-364), "03:00")
    assert run_if_due(Schedule(path, clock))


def test_config_times_are_checked():
    assert ScheduleConfig(snapshot_at="off").snapshot_at == "off"
    assert ConsolidateConfig(at="04:30").at == "04:30"
    for bad in ("25:00", "noon", 3):
        with pytest.raises(ValidationError):
            ScheduleConfig(snapshot_at=bad)
    with pytest.raises(ValidationError):
        ScheduleConfig(snaphot_at="03:00")  # a typo is an error


def test_consolidation_only_when_idle_and_on_schedule(tmp_path):
    clock = FakeClock(dt.datetime.combine(D, dt.time(5, 0)))
    s = Schedule(tmp_path / "schedule.json", clock)
    adapter = Line("v0007", "adapter", 3)
    every3 = ConsolidateConfig(every_jobs=3)
    assert consolidation_reason(s, every3, adapter, idle=False) is None  # fix #8
    assert "3 job(s)" in consolidation_reason(s, every3, adapter, idle=True)
    assert consolidation_reason(s, every3, Line("v0007", "adapter", 2), idle=True) is None
    assert consolidation_reason(s, every3, Line("v0007", "full", 0), idle=True) is None
    assert consolidation_reason(s, every3, Line(None, "base", 0), idle=True) is None

    daily = ConsolidateConfig(at="04:00")
    assert consolidation_reason(s, daily, Line("v0007", "adapter", 1), idle=False) is None
    assert consolidation_reason(s, daily, Line("v0007", "adapter", 1), idle=True) == "daily at 04:00"
    s.mark(CONSOLIDATE, s.stamp())
    assert consolidation_reason(s, daily, Line("v0008", "adapter", 2), idle=True) is None  # done today

    s.note(CONSOLIDATE, failed_version="v0007")  # a rejected merge is not retried ...
    assert consolidation_reason(s, every3, adapter, idle=True) is None
    assert consolidation_reason(s, every3, Line("v0009", "adapter", 4), idle=True)  # ... a newer one is


# ------------------------------------------------------------------ real processes
def _version(layout: Layout, name: str, parent: str = "base") -> None:
    d = layout.models / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(os.urandom(256))
    atomic.write_manifest(d, {"version": name, "parent": parent, "kind": "full", "base": None,
                              "jobs": [], "created_at": time.time()})
    set_current(layout, name)


def _settle(house: Housekeeping, timeout: float = 60) -> list[str]:
    """Tick like the supervisor until no task runs; the tasks seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        task = house.tick(idle=True)
        if task is None:
            return seen
        seen.append(task)
        assert time.monotonic() < deadline, "housework did not finish"
        time.sleep(0.05)


def test_daily_snapshot_process_once_per_day_across_restart_and_clock_moves(tmp_path):
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    (layout.config).write_text('base_model = "unused"\n')
    clock = FakeClock(dt.datetime.combine(D, dt.time(1, 0)))
    house = Housekeeping(layout, ScheduleConfig(snapshot_at="03:00"), clock=clock)

    assert _settle(house) == []  # no model yet and before 03:00
    _version(layout, "v0001")
    clock.pass_real(2.5)  # 03:30
    assert set(_settle(house)) == {DAILY}
    assert os.listdir(layout.snapshots) == [D.isoformat()]
    assert atomic.verify_manifest(layout.snapshots / D.isoformat())["snapshot_of"] == "v0001"
    assert "snapshot" in (layout.logs / "daily.log").read_text()

    _version(layout, "v0002", parent="v0001")  # the model changes, so a new snapshot would differ
    house = Housekeeping(layout, ScheduleConfig(snapshot_at="03:00"), clock=clock)  # a restart
    clock.pass_real(1)
    assert _settle(house) == []
    clock.set_wall(day(-1), "12:00")  # clock back a day
    clock.pass_real(1, wall_too=False)
    assert _settle(house) == []
    clock.set_wall(day(1), "04:00")  # and forward, only hours after the run
    clock.pass_real(1, wall_too=False)
    assert _settle(house) == []
    assert os.listdir(layout.snapshots) == [D.isoformat()]

    clock.pass_real(17)  # 20 h of real time since the run
    assert set(_settle(house)) == {DAILY}
    assert sorted(os.listdir(layout.snapshots)) == [D.isoformat(), day(1).isoformat()]
    assert atomic.verify_manifest(layout.snapshots / day(1).isoformat())["snapshot_of"] == "v0002"
    marker = json.loads((layout.run / "schedule.json").read_text())[DAILY]
    assert marker["ran_on"] == day(1).isoformat() and marker["result"] == "ok"


def test_housework_waits_while_not_allowed(tmp_path):
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    _version(layout, "v0001")
    clock = FakeClock(dt.datetime.combine(D, dt.time(4, 0)))
    house = Housekeeping(layout, ScheduleConfig(), ConsolidateConfig(every_jobs=1), clock=clock)
    assert house.tick(idle=True, allowed=False) is None  # paused, stopping, or disk low
    assert not (layout.run / "schedule.json").exists()
    assert line_state(layout).kind == "full"  # nothing to consolidate either


@pytest.mark.slow
def test_the_daemon_consolidates_when_idle_and_trains_on(tmp_path, tiny_model):
    from tests.conftest import chat_rows, cli, make_base, write_jsonl

    base = make_base(tmp_path / "b", tiny_model,
                     '[schedule]\nsnapshot_at = "00:00"\n[consolidate]\nevery_jobs = 1\n')
    layout = Layout.at(base)
    write_jsonl(base / "inbox" / "a.jsonl", chat_rows(8, "a"))
    cli("run", "--base-dir", base, "--once", timeout=600)  # trains v0001, merges it into v0002
    assert current_name(layout) == "v0002", (layout.logs / "consolidate.log").read_text()
    assert atomic.read_json(layout.models / "v0002" / "manifest.json")["kind"] == "full"
    assert json.loads((layout.run / "schedule.json").read_text())[DAILY]["result"] == "no model version yet"
    write_jsonl(base / "inbox" / "b.jsonl", chat_rows(8, "b"))
    cli("run", "--base-dir", base, "--once", timeout=600)
    v3 = atomic.read_json(layout.models / "v0003" / "manifest.json")
    assert (v3["parent"], v3["kind"]) == ("v0002", "adapter")
    assert current_name(layout) == "v0004"  # every_jobs = 1: merged again
