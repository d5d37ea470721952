"""Ledger events from processes that must not write state.db (the web server's uploads).

state.db has one writer, the daemon. A process that makes a job outside it (an upload
through Queue.submit) spools the queue's events here instead: one small JSON file each under
run/events/, named so that names sort in the order they were written. The daemon copies
them into the ledger on its next pass (drain) and deletes each after it is recorded: a
crash between the two records that one event twice at worst, never loses it. Events are
history, not truth (the job itself is already in jobs/), so a daemon that is not running
only delays them.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from trainerd import atomic
from trainerd.paths import Layout

log = logging.getLogger("trainerd.eventspool")

EVENTS_DIR = "events"
SUFFIX = ".json"
DRAIN_MAX = 1000  # per pass: a burst of uploads is recorded over a few passes, not in one


def put(layout: Layout, kind: str, job_id: str | None = None, **data: Any) -> None:
    """Spool one event (the signature of Queue's on_event sink)."""
    d = layout.run / EVENTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
    atomic.write_json(d / name, {"kind": kind, "job_id": job_id, "data": data, "at": time.time()})


def drain(layout: Layout, sink: Callable[..., None], limit: int = DRAIN_MAX) -> int:
    """Hand spooled events to `sink(kind, job_id, **data)` oldest first, deleting each after
    it; returns how many. Never raises: events must not stop the daemon's loop."""
    d = layout.run / EVENTS_DIR
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(SUFFIX) and not n.startswith(atomic.TMP_PREFIX))
    except OSError:
        return 0
    done = 0
    for name in names[:limit]:
        path = d / name
        try:
            ev = atomic.read_json(path)
            kind, job_id, data = ev["kind"], ev.get("job_id"), dict(ev.get("data") or {})
            if not isinstance(kind, str):
                raise ValueError("kind is not a string")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("%s: not a spooled event (%s); deleted", path, e)
            kind = None
        if kind is not None:
            try:
                sink(kind, job_id, **data)
            except Exception as e:  # the sink is the ledger: history must never stop the loop
                log.warning("%s: could not record %s (%s); kept for the next pass", path, kind, e)
                return done
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("%s: could not delete a recorded event (%s)", path, e)
            return done
        done += 1
    return done
