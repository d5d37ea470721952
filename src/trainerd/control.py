"""The user's wishes, persisted in control/ (DESIGN.md principle 5); the daemon converges.

- control/state.json: the desired daemon state — running, paused or stopped — with the
  reason and time. Survives restarts: a paused daemon that is restarted stays paused.
  `trainerd run` itself is a wish to run, so it clears a previous *stop* (not a pause).
- control/skip.json: skip one job, named by id, the one active when the skip was issued;
  a skip for a job that is no longer active is discarded, so it never hits a later job.
- BASE/.stop: the original daemon's switch, an alias of stop (consumed when honoured).

Precedence when wishes meet: stop > pause > skip. Each of them makes the worker finish
the optimizer step it is in and checkpoint. Then a pending skip still sends the job it
names to failed/ (the user named that job), and stop or pause decides what the daemon
does next: exit, or stay up and idle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from trainerd import atomic
from trainerd.paths import Layout


class Desired(str, Enum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass
class Wish:
    state: Desired = Desired.RUNNING
    reason: str | None = None
    at: float | None = None


@dataclass
class Skip:
    job_id: str
    reason: str | None
    at: float


def _state_path(layout: Layout) -> Path:
    return layout.control / "state.json"


def _skip_path(layout: Layout) -> Path:
    return layout.control / "skip.json"


def read_wish(layout: Layout) -> Wish:
    try:
        d = atomic.read_json(_state_path(layout))
        wish = Wish(Desired(d.get("state", "running")), d.get("reason"), d.get("at"))
    except (FileNotFoundError, ValueError, KeyError):
        wish = Wish()
    if layout.stop_file.exists():
        return Wish(Desired.STOPPED, f"{layout.stop_file} exists", None)
    return wish


def set_wish(layout: Layout, state: Desired, reason: str | None = None) -> Wish:
    layout.control.mkdir(parents=True, exist_ok=True)
    wish = Wish(state, reason, time.time())
    atomic.write_json(_state_path(layout), {"state": state.value, "reason": reason, "at": wish.at})
    return wish


def consume_stop_file(layout: Layout) -> None:
    """The .stop switch is one-shot: once honoured, the next `trainerd run` runs."""
    try:
        layout.stop_file.unlink()
    except FileNotFoundError:
        pass


def request_skip(layout: Layout, job_id: str, reason: str | None) -> Skip:
    skip = Skip(job_id, reason, time.time())
    atomic.write_json(_skip_path(layout), {"job_id": job_id, "reason": reason, "at": skip.at})
    return skip


def read_skip(layout: Layout) -> Skip | None:
    try:
        d = atomic.read_json(_skip_path(layout))
        return Skip(d["job_id"], d.get("reason"), d.get("at", 0.0))
    except (FileNotFoundError, ValueError, KeyError):
        return None


def clear_skip(layout: Layout) -> None:
    try:
        _skip_path(layout).unlink()
    except FileNotFoundError:
        pass
