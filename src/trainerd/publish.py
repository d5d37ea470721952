"""Serving follows training: `[publish]` hooks run whenever models/current changes.

A change is whatever moves the pointer: a job's publish, a rollback (also one made by the
CLI while the daemon runs), a consolidation. The supervisor calls `Publisher.tick()` every
loop pass; it reads the pointer (one readlink), and on a change hands a JSON summary to
each configured hook:

- `command = [...]`: run with TRAINERD_VERSION, TRAINERD_VERSION_DIR,
  TRAINERD_PARENT_VERSION and TRAINERD_BASE_DIR in its environment and the summary on
  stdin; exit 0 is success. Its own session, killed (the whole group) past the timeout.
- `webhook = "http(s)://..."`: the summary POSTed as application/json; 2xx is success.

Each hook runs on a thread of its own, so nothing here can block or fail training: an
attempt is bounded by timeout_seconds, a failure is retried after backoff_seconds, and
the outcome (ok or the last error, attempts) goes back to the loop thread, which records
it in state.db (one SQLite writer), the log, and run/publish.json (shown by status).
Which version each hook last finished is persisted there, so a restart neither fires
again for it nor forgets a change made while the daemon was down or mid-hook.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainerd import __version__, atomic
from trainerd.config import Config, PublishConfig
from trainerd.jobs import EVALS, JOB_JSON, child_env
from trainerd.paths import Layout

log = logging.getLogger("trainerd.publish")

OUTPUT_TAIL = 2000  # bytes of a command's output kept in the outcome
STOP_WAIT_S = 30.0  # how long a stopping daemon waits for deliveries in flight
JOBS_DETAILED = 5  # a consolidation holds the whole line's jobs: details for the newest few


def _read(path: Path) -> dict[str, Any]:
    try:
        d = atomic.read_json(path)
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _job_info(layout: Layout, job: dict[str, Any]) -> dict[str, Any]:
    """A job of the version: where it is now, its loss, and its last probe eval."""
    from trainerd.status import loss_curve

    out = dict(job)
    for state, d in (("done", layout.done), ("active", layout.active)):
        path = d / str(job.get("id"))
        if not (path / JOB_JSON).is_file():
            continue
        meta = _read(path / JOB_JSON)
        curve = [meta["first_loss"], meta["last_loss"]] if meta.get("first_loss") is not None else loss_curve(path)
        out.update(state=state, first_loss=curve[0] if curve else None, last_loss=curve[-1] if curve else None)
        evals = []
        with contextlib.suppress(OSError):
            for line in (path / EVALS).read_text().splitlines():
                with contextlib.suppress(ValueError):
                    evals.append(json.loads(line))
        if evals:
            e = evals[-1]
            out["probe"] = {k: e.get(k) for k in ("loss", "exact_match", "similarity", "step", "final", "probe_sha")}
        break
    return out


def summary(layout: Layout, base_model: str, version: str, previous: str | None) -> dict[str, Any]:
    """What a hook is told about `version` (the new current; "base" after a rollback to it)."""
    man = {} if version == "base" else {k: v for k, v in _read(layout.models / version / atomic.MANIFEST).items()
                                         if k != "files"}
    parent = man.get("parent")
    if previous is None:
        event = "current"  # the first the hooks hear of this line (newly configured, or a restart)
    elif parent is not None and parent == previous:
        event = "consolidation" if man.get("consolidated") else "publish"
    else:
        event = "rollback"
    jobs = list(man.get("jobs") or [])
    return {
        "event": event, "version": version, "previous": previous, "parent": parent,
        "kind": man.get("kind", "base"), "base": man.get("base") if man.get("kind") == "adapter" else None,
        "version_dir": str(layout.models / version) if version != "base" else base_model,
        "base_dir": str(layout.base), "created_at": man.get("created_at"),
        "jobs": jobs[:-JOBS_DETAILED] + [_job_info(layout, j) for j in jobs[-JOBS_DETAILED:]],
        "consolidated": man.get("consolidated"), "at": time.time(), "trainerd_version": __version__,
    }


# ------------------------------------------------------------------ the hooks
def run_command(cmd: list[str], event: dict[str, Any], timeout: float) -> str | None:
    """None on success, else why it failed (exit status and output tail)."""
    env = dict(child_env(), TRAINERD_VERSION=event["version"], TRAINERD_VERSION_DIR=event["version_dir"] or "",
               TRAINERD_PARENT_VERSION=event["parent"] or "", TRAINERD_BASE_DIR=event["base_dir"])
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    except OSError as e:
        return f"cannot run {cmd[0]}: {e.strerror or e}; check [publish] command"
    try:
        out, _ = proc.communicate(json.dumps(event).encode() + b"\n", timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)  # the hook's children too
        proc.communicate()
        return f"still running after {timeout:g}s (publish.timeout_seconds); killed"
    tail = out[-OUTPUT_TAIL:].decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        return f"exit {proc.returncode}" + (f": {tail}" if tail else "")
    if tail:
        log.info("publish command output: %s", tail)
    return None


def post_webhook(url: str, event: dict[str, Any], timeout: float) -> str | None:
    req = urllib.request.Request(url, data=json.dumps(event).encode(), method="POST", headers={
        "Content-Type": "application/json", "User-Agent": f"trainerd/{__version__}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read(OUTPUT_TAIL)
            return None if 200 <= r.status < 300 else f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {e.reason}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"{url}: {getattr(e, 'reason', None) or e}"


class _Hook:
    """One hook kind on its own thread: events in order, each retried until it succeeds or
    its attempts run out. Only the newest pending change matters to a server, so a backlog
    (a hook slower than training) keeps the newest events and says what it skipped."""

    MAX_PENDING = 8

    def __init__(self, name: str, fire: Callable[[dict[str, Any]], str | None], cfg: PublishConfig,
                 done: queue.SimpleQueue):
        self.name, self.fire, self.cfg, self.done = name, fire, cfg, done
        self.pending: collections.deque[dict[str, Any]] = collections.deque()
        self.cv = threading.Condition()
        self.stopping = threading.Event()  # no more retries: the daemon is going now
        self.closing = threading.Event()  # deliver what is pending, retries included, then end
        self.busy: str | None = None
        self.thread = threading.Thread(target=self._run, name=f"trainerd-publish-{name}", daemon=True)
        self.thread.start()

    def submit(self, event: dict[str, Any]) -> None:
        with self.cv:
            self.pending.append(event)
            while len(self.pending) > self.MAX_PENDING:
                old = self.pending.popleft()
                self.done.put({"hook": self.name, "version": old["version"], "ok": False, "attempts": 0,
                               "error": "skipped: newer versions were waiting", "at": time.time()})
            self.cv.notify()

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.pending and not (self.stopping.is_set() or self.closing.is_set()):
                    self.cv.wait(1.0)
                if not self.pending:
                    return  # stopping, and everything submitted was delivered
                event = self.pending.popleft()
                self.busy = event["version"]
            self.done.put(self._deliver(event))
            self.busy = None

    def _deliver(self, event: dict[str, Any]) -> dict[str, Any]:
        t0, error, attempt = time.monotonic(), None, 0
        for attempt in range(1, self.cfg.retries + 2):
            try:
                error = self.fire(event)
            except Exception as e:  # a hook must never take a thread (or anything) down
                error = f"{type(e).__name__}: {e}"
            if error is None or attempt > self.cfg.retries:
                break
            waits = self.cfg.backoff_seconds or [0.0]
            log.warning("publish %s for %s failed (attempt %d): %s; retrying", self.name, event["version"],
                        attempt, error)
            if self.stopping.wait(waits[min(attempt, len(waits)) - 1]):
                # The daemon is stopping: no more retries now; the next start delivers it again.
                return {"hook": self.name, "version": event["version"], "event": event["event"], "ok": False,
                        "attempts": attempt, "error": f"{error} (retries cut short by the daemon stopping)",
                        "interrupted": True, "seconds": round(time.monotonic() - t0, 3), "at": time.time()}
        return {"hook": self.name, "version": event["version"], "event": event["event"], "ok": error is None,
                "attempts": attempt, "error": error, "seconds": round(time.monotonic() - t0, 3), "at": time.time()}

    def stop(self, retries: bool = False) -> None:
        (self.closing if retries else self.stopping).set()
        with self.cv:
            self.cv.notify()


class Publisher:
    def __init__(self, layout: Layout, cfg: Config, sink: Callable[..., None] | None = None):
        self.layout, self.sink = layout, sink
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.hooks: dict[str, _Hook] = {}
        state = _read(layout.publish_json)
        self.notified: dict[str, str] = dict(state.get("notified") or {})  # hook -> version it finished
        self.last: dict[str, dict[str, Any]] = dict(state.get("last") or {})
        self.seen: str | None = None
        self._errors = 0
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """(Re)start the hooks for this config, e.g. after SIGHUP; a hook in flight finishes."""
        for h in self.hooks.values():
            h.stop()
        self.cfg, self.base_model = cfg.publish, cfg.base_model
        self.hooks = {}
        if self.cfg.command:
            cmd = list(self.cfg.command)
            self.hooks["command"] = _Hook("command", lambda e: run_command(cmd, e, self.cfg.timeout_seconds),
                                          self.cfg, self.done)
        if self.cfg.webhook:
            url = self.cfg.webhook
            self.hooks["webhook"] = _Hook("webhook", lambda e: post_webhook(url, e, self.cfg.timeout_seconds),
                                          self.cfg, self.done)
        self.seen = None  # compare the pointer with what each hook finished, again

    def tick(self) -> None:
        """Every loop pass: record finished deliveries, notice a changed pointer. Never raises."""
        try:
            self._tick()
            self._errors = 0
        except Exception:
            self._errors += 1
            if self._errors in (1, 10, 100):  # said, without flooding the log every tick
                log.exception("publish hooks: internal error (training goes on)")

    def _drain(self) -> bool:
        """Record the deliveries the hook threads finished; True if there were any."""
        changed = False
        while True:
            try:
                outcome = self.done.get_nowait()
            except queue.Empty:
                return changed
            changed = True
            self._record(outcome)

    def _tick(self) -> None:
        changed = self._drain()
        if not self.hooks:
            return
        try:
            cur = os.readlink(self.layout.current_model)
        except OSError:
            cur = "base"
        if cur != self.seen:
            previous, self.seen = self.seen, cur
            # A hook that never delivered anything hears of the base model only through a
            # rollback to it, not at the first start of a line that has no version yet.
            targets = [n for n in self.hooks if self.notified.get(n, "base" if previous is None else None) != cur]
            if targets:
                prior = previous if previous is not None else (self.notified.get(targets[0]) or None)
                event = summary(self.layout, self.base_model, cur, prior)
                log.info("models/current is %s (%s): running publish hooks: %s", cur, event["event"], ", ".join(targets))
                for n in targets:
                    self.hooks[n].submit(event)
                changed = True
        if changed:
            self._save()

    def _record(self, o: dict[str, Any]) -> None:
        self.last[o["hook"]] = o
        if o.get("attempts") and not o.get("interrupted"):  # ran, ok or not: that version is dealt with
            self.notified[o["hook"]] = o["version"]
        if o["ok"]:
            log.info("publish %s for %s: ok (%d attempt(s), %.1fs)", o["hook"], o["version"], o["attempts"],
                     o.get("seconds", 0))
        else:
            log.error("publish %s for %s failed after %d attempt(s): %s; training goes on", o["hook"],
                      o["version"], o["attempts"], o["error"])
        if self.sink is not None:
            self.sink("publish_hook", None, **o)

    def _save(self) -> None:
        with contextlib.suppress(OSError):  # a full disk: the outcome is still in memory and the log
            atomic.write_json(self.layout.publish_json, self.status())

    def status(self) -> dict[str, Any]:
        return {"hooks": sorted(self.hooks), "current": self.seen, "notified": self.notified, "last": self.last,
                "pending": {n: len(h.pending) + (1 if h.busy else 0) for n, h in self.hooks.items()}}

    def stop(self, retries: bool = False) -> None:
        """At daemon exit: a change seen in the last pass is still delivered, each pending
        delivery gets its current attempt (no more retries), for at most STOP_WAIT_S in all;
        one still unfinished then is not recorded as done, so the next start delivers it.
        `retries`: the daemon ends because its work is done (`run --once` on an empty
        queue), not because someone wants it gone: deliveries keep their retries, within
        the same STOP_WAIT_S, and only then are cut short."""
        self.tick()
        for h in self.hooks.values():
            h.stop(retries)
        wait = STOP_WAIT_S if retries else min(self.cfg.timeout_seconds, STOP_WAIT_S)
        deadline = time.monotonic() + wait
        for h in self.hooks.values():
            h.thread.join(max(0.0, deadline - time.monotonic()))
        if retries:  # out of time: cut the retries, give the attempt in flight its timeout
            for h in self.hooks.values():
                h.stop()
            deadline = time.monotonic() + min(self.cfg.timeout_seconds, STOP_WAIT_S)
            for h in self.hooks.values():
                h.thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            if self._drain():
                self._save()
