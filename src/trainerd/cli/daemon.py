"""The daemon and what it is asked: `run`, `status`, `systemd-unit`, and the wishes `pause`,
`resume`, `stop`, `skip` (files the running daemon acts on; see trainerd.control)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from trainerd import control
from trainerd.cli.base import BaseDir, fail, layout_of, loss, out
from trainerd.config import ConfigError, QueueConfig
from trainerd.humanize import ago
from trainerd.jobs import JobState
from trainerd.names import printable


def run(
    base_dir: Path = BaseDir,
    once: bool = typer.Option(False, "--once", "--exit-when-idle",
                              help="exit when the queue is empty (0), or at once with 4 when paused"),
    log_format: str = typer.Option("text", help="text or json (json records carry job_id, attempt, version)"),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Run the daemon in the foreground (systemd runs it like this)."""
    from trainerd import oplog
    from trainerd.lock import AlreadyRunning
    from trainerd.preflight import PreflightError
    from trainerd.supervisor import run_daemon

    layout = layout_of(base_dir)
    try:
        oplog.setup(layout.logs, log_format, verbose)
    except oplog.LogFormatError as e:
        fail(str(e), 2)
    try:
        code = run_daemon(base_dir, once=once, start_web=_start_web)
    except (ConfigError, PreflightError) as e:
        fail(str(e), 2)
    except AlreadyRunning as e:
        fail(str(e), 3)
    raise typer.Exit(code)


def status(
    base_dir: Path = BaseDir,
    as_json: bool = typer.Option(False, "--json", help="machine-readable"),
    watch: bool = typer.Option(False, "--watch", "-w", help="a live view, redrawn until Ctrl+C"),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="seconds between redraws (--watch)"),
) -> None:
    """Is the daemon running, what is it training, what is queued, which model is current."""
    from trainerd.status import collect

    if watch:
        if as_json:
            fail("--watch draws for a terminal; use --json alone for a machine-readable snapshot")
        from trainerd.watch import watch as live_view

        live_view(layout_of(base_dir), interval)
        return
    s = collect(layout_of(base_dir))
    if as_json:
        out.print_json(json.dumps(s, default=str))
        return
    d = s["daemon"]
    if d["running"]:
        health = "" if d.get("responding", True) else \
            f" [bold red]NOT RESPONDING[/] (last heartbeat {d.get('heartbeat_age', 0):.0f}s ago)"
        out.print(f"daemon: [green]running[/] (pid {d.get('pid')}, {d.get('state') or 'starting'}){health}")
    else:
        out.print("daemon: [yellow]not running[/]")
    if s["desired"]["state"] != "running":
        out.print(f"wish:   [yellow]{s['desired']['state']}[/] ({s['desired']['reason'] or 'by user'})")
    q = s["queue"]
    out.print(f"queue:  {q['queued']} queued (high {q['queued_high']}, normal {q['queued_normal']}, "
              f"low {q['queued_low']}), {q['active']} active, {q['done']} done, {q['failed']} failed")
    m = s["model"]
    out.print(f"model:  {m['version']}" + (f" ({m.get('kind')}, parent {m.get('parent')})" if m["version"] != "base" else ""))
    if d.get("paused_reason"):
        out.print(f"paused: [red]{escape(d['paused_reason'])}[/]", highlight=False)
    for hook, o in sorted(((s.get("publish") or {}).get("last") or {}).items()):
        state = "[green]ok[/]" if o.get("ok") else f"[red]failed[/] ({escape(str(o.get('error')))})"
        out.print(f"publish {hook}: {o.get('version')} {state}, {o.get('attempts')} attempt(s), {ago(o.get('at'))}",
                  highlight=False)
    if m.get("gate"):
        out.print(f"gate:   [yellow]{m['gate']['state']}[/] {escape(str(m['gate']['verdict']))}", highlight=False)
    for j in s["done"]:
        if (j.get("gate") or {}).get("action") == "held" and j.get("version") != m["version"]:
            out.print(f"[yellow]held[/] {j.get('version')} ({escape(str(j['name']))}): "
                      f"{escape(str(j['gate'].get('verdict')))}; `trainerd models rollback {j.get('version')}` "
                      "makes it current", highlight=False)
    for a in s["active"]:
        p = a.get("progress") or {}
        step, total = p.get("step"), p.get("max_steps")
        n = p.get("examples_total") or a["examples"]  # with replay, more than the file holds
        frac = f"step {step}/{total}, {p.get('examples_done', 0)}/{n} examples" if step else "starting"
        phase = (a.get("heartbeat") or {}).get("phase")
        out.print(f"active: {escape(printable(a['name']))} ({a['id']}): {frac}, loss {loss(p.get('loss'))}, "
                  f"{p.get('tokens_per_s') or 0:.0f} tok/s" + (f", phase {phase}" if phase else ""), highlight=False)
    for j in s["queued"]:
        if j.get("waiting"):
            out.print(f"queued: {escape(printable(j['name']))} ({j['id']}): {j['waiting']}", highlight=False)
    _print_inbox(d.get("inbox"))
    if s["done"]:
        t = Table(title="trained", title_justify="left")
        for col in ("file", "examples", "steps", "loss first -> last"):
            t.add_column(col)
        for j in s["done"]:
            cut = ", ".join(f"{j[k]} {k}" for k in ("sequences", "dropped", "truncated")
                            if j.get(k) and (k != "sequences" or j[k] != j["examples"]))
            t.add_row(escape(printable(str(j["name"]))), str(j["examples"]) + (f" ({cut})" if cut else ""), str(j["steps_done"]),
                      f"{loss(j['first_loss'])} -> {loss(j['last_loss'])}")
        out.print(t)
    for j in s["failed"]:
        out.print(f"[red]failed[/] {j['id']} ({escape(printable(str(j.get('name'))))}): "
                  f"{escape(printable(str(j.get('reason'))))}", highlight=False)


def _print_inbox(inbox: dict | None) -> None:
    """Inbox entries not taken in (yet), with why: settling, ignored by the Maildir rules."""
    if not inbox:
        return
    if inbox.get("blocked"):
        out.print(f"inbox:  [red]{escape(inbox['blocked'])}[/]", highlight=False)
    for key, label in (("waiting", "waiting"), ("ignored", "ignored")):
        for e in inbox.get(key) or []:
            out.print(f"inbox:  {label} {escape(e['name'])}: {escape(e['why'])}", highlight=False)
        more = (inbox.get(f"{key}_count") or 0) - len(inbox.get(key) or [])
        if more > 0:
            out.print(f"inbox:  ... and {more} more {label}")


def systemd_unit(
    base_dir: Path = BaseDir,
    user: str | None = typer.Option(None, help="User= (default: you; required as root, or --as-root)"),
    group: str | None = typer.Option(None, help="Group= (default: the user's primary group)"),
    as_root: bool = typer.Option(False, "--as-root", help="run the daemon as root, on purpose"),
    user_unit: bool = typer.Option(False, "--user-unit", help="a unit for `systemctl --user` (no User=)"),
    gpu: bool | None = typer.Option(None, "--gpu/--no-gpu", help="allow NVIDIA devices (default: when "
                                    "/dev/nvidiactl exists)"),
    stop_timeout: int = typer.Option(900, help="TimeoutStopSec: long enough for a checkpoint"),
    start_timeout: int = typer.Option(900, help="TimeoutStartSec: long enough for recovery"),
) -> None:
    """Print a hardened systemd unit (Type=notify, watchdog, warm stop on SIGTERM) for this base dir."""
    from trainerd.systemd import UnitError, UnitSpec, resolve_user, unit

    layout = layout_of(base_dir)
    try:
        u, g = resolve_user(user, group, as_root, user_unit)
    except UnitError as e:
        fail(str(e), 2)
    has_gpu = os.path.exists("/dev/nvidiactl") if gpu is None else gpu
    print(unit(UnitSpec(layout.base, u, g, user_unit, stop_timeout, start_timeout, gpu=has_gpu)), end="")


def _wish(base_dir: Path, state: control.Desired, reason: str | None) -> None:
    from trainerd.lock import holder

    layout = layout_of(base_dir)
    control.set_wish(layout, state, reason)
    running = holder(layout.lock) is not None
    tail = "" if running else " (the daemon is not running; it will act on this when started)"
    out.print(f"{state.value}{tail}")


def pause(base_dir: Path = BaseDir, reason: str | None = typer.Option(None, "--reason")) -> None:
    """Checkpoint the active job at the next step and stay idle until `resume`."""
    _wish(base_dir, control.Desired.PAUSED, reason)


def resume(base_dir: Path = BaseDir, reason: str | None = typer.Option(None, "--reason")) -> None:
    """Continue training (the paused job resumes from its checkpoint)."""
    _wish(base_dir, control.Desired.RUNNING, reason)


def stop(base_dir: Path = BaseDir, reason: str | None = typer.Option(None, "--reason")) -> None:
    """Checkpoint the active job at the next step, then the daemon exits 0."""
    _wish(base_dir, control.Desired.STOPPED, reason)


def skip(base_dir: Path = BaseDir, reason: str | None = typer.Option(None, "--reason")) -> None:
    """Send the job that is active now to failed/ ("skipped by user"; requeue-able)."""
    from trainerd.queue import Queue

    layout = layout_of(base_dir)
    active = Queue(layout, QueueConfig()).list(JobState.ACTIVE)
    if not active:
        fail("no job is active, so there is nothing to skip; `trainerd queue remove ID` drops a queued one")
    control.request_skip(layout, active[0].id, reason)
    out.print(f"skip requested for {active[0].id}")


def _start_web(*args: Any) -> Any:
    """The daemon's HTTP, handed to it by this face (the daemon layer never imports the
    web); imported only when [server] is enabled."""
    from trainerd.web.server import start_server

    return start_server(*args)
