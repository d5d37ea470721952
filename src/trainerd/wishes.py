"""Queue and model-line edits asked for from the dashboard, as wishes in control/actions/.

The HTTP server never moves a job or a version itself (DESIGN.md principle 5: the user
states a wish, the daemon converges). It writes one file per request,
control/actions/<id>.json, and the daemon's loop carries each out with the queue's and
the model line's own functions (Queue.move / requeue / remove, line.rollback),
exactly as the CLI calls them, then writes the outcome to control/actions/done/<id>.json
for the page to read. A wish is a plain file: it survives a daemon restart and is carried
out when the daemon is back; a paused daemon still carries them out (editing the queue is
what one pauses for).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.jobs import Priority
from trainerd.paths import Layout

log = logging.getLogger("trainerd.wishes")

ACTIONS = ("move", "requeue", "remove", "rollback")
ID_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyz-")
KEEP_DONE = 200  # outcomes kept for the page to read; older ones are deleted


class WishError(ValueError):
    """A request that cannot become a wish (unknown action, missing argument)."""


def _dir(layout: Layout) -> Path:
    return layout.control / "actions"


def _done_dir(layout: Layout) -> Path:
    return _dir(layout) / "done"


def request(layout: Layout, action: str, **args: Any) -> dict[str, Any]:
    """Write a wish; returns it with its id. Arguments are checked here, so a typo is a 400
    at once, not a failure later in the daemon's log."""
    if action not in ACTIONS:
        raise WishError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if action == "rollback":
        if not isinstance(args.get("version"), str) or not args["version"]:
            raise WishError("rollback needs a version (vNNNN, or base)")
    elif not isinstance(args.get("job_id"), str):
        raise WishError(f"{action} needs a job_id")
    if action == "move" or args.get("priority") is not None:
        try:
            Priority(args.get("priority"))
        except ValueError:
            raise WishError("priority must be high, normal or low") from None
    # Sortable by time, unique without a lock: carried out in the order they were asked.
    wish_id = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
    wish = {"id": wish_id, "action": action, "args": args, "at": time.time()}
    _dir(layout).mkdir(parents=True, exist_ok=True)
    atomic.write_json(_dir(layout) / f"{wish_id}.json", wish)
    return wish


def outcome(layout: Layout, wish_id: str) -> dict[str, Any] | None:
    """The wish's outcome once carried out; {"state": "pending"} before; None if unknown."""
    if not wish_id or not set(wish_id) <= ID_CHARS or len(wish_id) > 64:
        return None
    with contextlib.suppress(OSError, ValueError):
        return atomic.read_json(_done_dir(layout) / f"{wish_id}.json")
    if (_dir(layout) / f"{wish_id}.json").exists():
        return {"id": wish_id, "state": "pending"}
    return None


def pending(layout: Layout) -> list[Path]:
    try:
        return sorted(p for p in _dir(layout).iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except FileNotFoundError:
        return []


def carry_out(layout: Layout, queue: Any, on_event: Callable[..., None] | None = None) -> int:
    """Carry out every pending wish, oldest first; returns how many. Never raises for a
    wish that fails: its outcome says why (the page shows it), the loop goes on."""
    from trainerd.line.errors import LineError
    from trainerd.line.rollback import rollback
    from trainerd.queue import QueueError

    n = 0
    for path in pending(layout):
        try:
            wish = atomic.read_json(path)
            action, args = wish["action"], dict(wish.get("args") or {})
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("wish %s unreadable (%s); dropped", path.name, e)
            path.unlink(missing_ok=True)
            continue
        result: dict[str, Any] = {"id": wish.get("id", path.stem), "action": action, "args": args}
        try:
            if action == "move":
                ref = queue.move(args["job_id"], Priority(args["priority"]))
                result["result"] = {"job_id": ref.id, "priority": args["priority"]}
            elif action == "requeue":
                prio = Priority(args["priority"]) if args.get("priority") else None
                ref = queue.requeue(args["job_id"], prio)
                result["result"] = {"job_id": ref.id, "state": ref.state.value}
            elif action == "remove":
                queue.remove(args["job_id"])
                result["result"] = {"job_id": args["job_id"], "removed": True}
            elif action == "rollback":
                result["result"] = rollback(layout, args["version"])
                if on_event is not None:
                    on_event("rollback", None, via="dashboard", **result["result"])
            else:
                raise WishError(f"unknown action {action!r}")
            result["state"] = "done"
            log.info("dashboard: %s %s done", action, args.get("job_id") or args.get("version"))
        except (QueueError, LineError, WishError, KeyError, ValueError) as e:
            result.update(state="failed", error=str(e))
            log.warning("dashboard: %s %s refused: %s", action, args.get("job_id") or args.get("version"), e)
        except Exception as e:  # e.g. an OSError: answered once, never retried every tick
            result.update(state="failed", error=f"{type(e).__name__}: {e}")
            log.exception("dashboard: %s %s failed", action, args.get("job_id") or args.get("version"))
        result["done_at"] = time.time()
        _done_dir(layout).mkdir(parents=True, exist_ok=True)
        atomic.write_json(_done_dir(layout) / path.name, result)
        path.unlink(missing_ok=True)
        n += 1
    if n:
        _prune(layout)
    return n


def _prune(layout: Layout) -> None:
    done = sorted(_done_dir(layout).glob("*.json"))
    for p in done[:-KEEP_DONE]:
        with contextlib.suppress(OSError):
            os.unlink(p)
