"""The `trainerd` command: a thin Typer app; each command calls one library function.

Nothing here imports torch at module level, so `status`, `queue`, `pause` & co. answer at
once. Errors are printed as one sentence with what to do, and exit non-zero.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainerd import control
from trainerd.config import ConfigError, QueueConfig, load_config
from trainerd.jobs import JobState, Priority
from trainerd.names import printable
from trainerd.paths import Layout

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Keep a language model learning from files dropped into a folder.")
queue_app = typer.Typer(no_args_is_help=True, help="Inspect and edit the job queue (safe while the daemon runs).")
models_app = typer.Typer(no_args_is_help=True, help="Model versions.")
app.add_typer(queue_app, name="queue")
app.add_typer(models_app, name="models")

out = Console(soft_wrap=True)  # never hard-wrap paths or messages; tables still fit
err = Console(stderr=True, soft_wrap=True)

BaseDir = typer.Option(
    Path(os.environ.get("TRAINERD_BASE_DIR", ".")), "--base-dir", "-b",
    help="trainerd's base directory (env TRAINERD_BASE_DIR)",
)


def _fail(msg: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False)
    raise typer.Exit(code)


def _layout(base: Path, must_exist: bool = True) -> Layout:
    layout = Layout.at(base)
    if must_exist and not layout.config.exists():
        _fail(f"{layout.base} is not a trainerd base dir (no trainerd.toml); "
              f"create one with `trainerd init --base-dir {base}`")
    return layout


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    s = max(0, time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def _loss(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


# ------------------------------------------------------------------ setup and daemon
@app.command()
def init(
    base_dir: Path = BaseDir,
    tiny_model: bool = typer.Option(False, "--tiny-model", help="build a tiny local model and use it"),
    base_model: str | None = typer.Option(None, help="local model directory or hub id"),
    warm_steps: int = typer.Option(300, help="full fine-tuning steps that warm the tiny model"),
    samples: bool = typer.Option(False, "--samples", help="also drop the shipped sample files into inbox/"),
    force: bool = typer.Option(False, help="overwrite an existing config / tiny model"),
) -> None:
    """Create the base dir layout and a commented trainerd.toml."""
    from trainerd.bootstrap import copy_samples, init_base

    info = init_base(base_dir, tiny_model=tiny_model, base_model=base_model,
                     warm_steps=warm_steps, force=force)
    out.print(f"base dir: {info['base_dir']}\nconfig:   {info['config']}")
    if "tiny_model" in info:
        t = info["tiny_model"]
        out.print(f"tiny model: {t['params']:,} parameters, vocab {t['vocab']}, warmed {t['warm_steps']} steps "
                  f"(loss {_loss(t['warm_loss_first'])} -> {_loss(t['warm_loss_last'])})")
    if samples:
        out.print(f"samples in inbox/: {', '.join(copy_samples(base_dir))}")


@app.command()
def run(
    base_dir: Path = BaseDir,
    once: bool = typer.Option(False, "--once", "--exit-when-idle",
                              help="exit when the queue is empty (0), or at once with 4 when paused"),
    log_format: str = typer.Option("text", help="text or json"),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Run the daemon in the foreground (systemd runs it like this)."""
    from trainerd.lock import AlreadyRunning
    from trainerd.preflight import PreflightError
    from trainerd.supervisor import run_daemon

    _setup_logging(_layout(base_dir), log_format, verbose)
    try:
        code = run_daemon(base_dir, once=once)
    except (ConfigError, PreflightError) as e:
        _fail(str(e), 2)
    except AlreadyRunning as e:
        _fail(str(e), 3)
    raise typer.Exit(code)


def _setup_logging(layout: Layout, fmt: str, verbose: bool) -> None:
    class Json(logging.Formatter):
        def format(self, r: logging.LogRecord) -> str:
            d = {"ts": r.created, "level": r.levelname, "logger": r.name, "msg": r.getMessage()}
            if r.exc_info:
                d["exc"] = self.formatException(r.exc_info)
            return json.dumps(d)

    fmt_obj = Json() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    layout.logs.mkdir(parents=True, exist_ok=True)
    handlers.append(logging.FileHandler(layout.logs / "trainerd.log"))
    for h in handlers:
        h.setFormatter(fmt_obj)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers, force=True)


@app.command()
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
            _fail("--watch draws for a terminal; use --json alone for a machine-readable snapshot")
        from trainerd.watch import watch as live_view

        live_view(_layout(base_dir), interval)
        return
    s = collect(_layout(base_dir))
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
    for a in s["active"]:
        p = a.get("progress") or {}
        step, total = p.get("step"), p.get("max_steps")
        n = p.get("examples_total") or a["examples"]  # with replay, more than the file holds
        frac = f"step {step}/{total}, {p.get('examples_done', 0)}/{n} examples" if step else "starting"
        phase = (a.get("heartbeat") or {}).get("phase")
        out.print(f"active: {escape(printable(a['name']))} ({a['id']}): {frac}, loss {_loss(p.get('loss'))}, "
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
            t.add_row(escape(printable(str(j["name"]))), str(j["examples"]), str(j["steps_done"]),
                      f"{_loss(j['first_loss'])} -> {_loss(j['last_loss'])}")
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


@app.command()
def validate(
    files: list[Path] = typer.Argument(..., help="JSONL files to check"),
    base_dir: Path | None = typer.Option(
        None, "--base-dir", "-b",
        help="also tokenize with this base dir's current model: token lengths, over-length share"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check JSONL files as the daemon would at intake; exit 1 if any is bad."""
    from trainerd.validate import validate_file

    reports = [validate_file(f) for f in files]
    results = [r.to_dict() for r in reports]
    if base_dir is not None and any(r.ok for r in reports):
        tokens = _token_reports(_layout(base_dir), [r for r in reports if r.ok])
        for d in results:
            d["tokens"] = tokens.get(d["path"])
    if as_json:
        out.print_json(json.dumps(results))
    else:
        for r, d in zip(reports, results, strict=True):
            if r.ok:
                fmts = ", ".join(f"{k} {v}" for k, v in r.formats.items())
                out.print(f"[green]ok[/]   {escape(r.path)}: {r.examples} examples ({fmts})", highlight=False)
                if d.get("tokens"):
                    t = d["tokens"]
                    for k in ("prompt_tokens", "trained_tokens"):
                        s = t[k]
                        out.print(f"       {k.replace('_', ' ')}: min {s['min']}, mean {s['mean']}, "
                                  f"p95 {s['p95']}, max {s['max']}")
                    out.print(f"       over max_seq_len {t['max_seq_len']}: {t['over_max_seq_len']} "
                              f"({100 * t['over_share']:.1f}%), policy '{t['overlength_policy']}'")
            else:
                out.print(f"[red]bad[/]  {escape(r.path)}: {escape(r.reason())}", highlight=False)
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


def _token_reports(layout: Layout, reports: list) -> dict[str, dict]:
    """Token statistics with the current model's tokenizer and chat template (imports the
    training stack: a few seconds, only when asked for)."""
    from trainerd.worker.data import token_report
    from trainerd.worker.models import current, load_tokenizer

    try:
        cfg = load_config(layout.config)
    except ConfigError as e:
        _fail(str(e), 2)
    tok = load_tokenizer(current(layout, cfg))
    return {r.path: token_report(Path(r.path), tok, cfg.train) for r in reports}


@app.command("systemd-unit")
def systemd_unit(
    base_dir: Path = BaseDir,
    user: str | None = typer.Option(None, help="User= line for the unit"),
    stop_timeout: int = typer.Option(900, help="TimeoutStopSec: long enough for a checkpoint"),
) -> None:
    """Print a systemd unit (Type=notify, watchdog, warm stop on SIGTERM) for this base dir."""
    from trainerd.systemd import unit

    print(unit(_layout(base_dir).base, user, stop_timeout), end="")


# ------------------------------------------------------------------ control
def _wish(base_dir: Path, state: control.Desired, reason: str | None) -> None:
    from trainerd.lock import holder

    layout = _layout(base_dir)
    control.set_wish(layout, state, reason)
    running = holder(layout.lock) is not None
    tail = "" if running else " (the daemon is not running; it will act on this when started)"
    out.print(f"{state.value}{tail}")


@app.command()
def pause(base_dir: Path = BaseDir, reason: str | None = typer.Option(None, "--reason")) -> None:
    """Checkpoint the active job at the next step and stay idle until `resume`."""
    _wish(base_dir, control.Desired.PAUSED, reason)


@app.command()
def resume(base_dir: Path = BaseDir, reason: str | None = typer.Option(None, "--reason")) -> None:
    """Continue training (the paused job resumes from its checkpoint)."""
    _wish(base_dir, control.Desired.RUNNING, reason)


@app.command()
def stop(base_dir: Path = BaseDir, reason: str | None = typer.Option(None, "--reason")) -> None:
    """Checkpoint the active job at the next step, then the daemon exits 0."""
    _wish(base_dir, control.Desired.STOPPED, reason)


@app.command()
def skip(base_dir: Path = BaseDir, reason: str | None = typer.Option(None, "--reason")) -> None:
    """Send the job that is active now to failed/ ("skipped by user"; requeue-able)."""
    from trainerd.queue import Queue

    layout = _layout(base_dir)
    active = Queue(layout, QueueConfig()).list(JobState.ACTIVE)
    if not active:
        _fail("no job is active, so there is nothing to skip; `trainerd queue remove ID` drops a queued one")
    control.request_skip(layout, active[0].id, reason)
    out.print(f"skip requested for {active[0].id}")


# ------------------------------------------------------------------ queue
def _queue(base_dir: Path):
    from trainerd.ledger import Ledger
    from trainerd.queue import Queue

    layout = _layout(base_dir)
    try:
        ledger: Any = Ledger(layout.state_db)
        sink = ledger.event
    except Exception:
        sink = None
    try:
        cfg = load_config(layout.config).queue
    except ConfigError:
        cfg = QueueConfig()
    return Queue(layout, cfg, on_event=sink)


def _queue_call(fn, *args: Any, **kw: Any) -> Any:
    from trainerd.queue import QueueError

    try:
        return fn(*args, **kw)
    except QueueError as e:
        _fail(str(e))


@queue_app.command("add")
def queue_add(
    files: list[Path] = typer.Argument(...),
    priority: Priority = typer.Option(Priority.NORMAL, "--priority", "-p"),
    move: bool = typer.Option(False, "--move", help="move the file in instead of copying it"),
    base_dir: Path = BaseDir,
) -> None:
    """Queue files directly (copied atomically; your file is left as it is)."""
    q = _queue(base_dir)
    bad = 0
    for f in files:
        if not f.is_file():
            err.print(f"[red]skipped[/] {escape(printable(str(f)))}: not a regular file", highlight=False)
            bad += 1
            continue
        ref = q.submit(f, priority, move=move)
        if ref.state == JobState.QUEUED:
            out.print(f"queued {ref.id} ({priority.value})")
        else:
            from trainerd.status import job_summary

            bad += 1
            out.print(f"[red]rejected[/] {escape(printable(str(f)))}: {escape(str(job_summary(ref).get('reason')))}",
                      highlight=False)
    raise typer.Exit(1 if bad else 0)


@queue_app.command("list")
def queue_list(
    state: str = typer.Option("queued", "--state", help="queued, active, done, failed or all"),
    as_json: bool = typer.Option(False, "--json"),
    base_dir: Path = BaseDir,
) -> None:
    """List jobs (Rich table: id, name, priority, examples, attempts, age)."""
    from trainerd.status import job_summary

    q = _queue(base_dir)
    st = None if state == "all" else JobState(state)
    rows = [job_summary(r) for r in q.list(st)]
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    t = Table()
    for col in ("id", "name", "state", "priority", "examples", "attempts", "age", "waiting"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["id"], escape(printable(str(r.get("name", "?")))), r["state"], r.get("priority", "-"),
                  str(r.get("examples", "")), str(r.get("attempts", "")), _ago(r.get("submitted_at")),
                  r.get("waiting") or "")
    out.print(t)


@queue_app.command("show")
def queue_show(job_id: str, base_dir: Path = BaseDir) -> None:
    """Everything about one job: metadata, attempts, error."""
    from trainerd.status import job_summary

    q = _queue(base_dir)
    ref = _queue_call(q.find, job_id)
    out.print_json(json.dumps({"summary": job_summary(ref), "job": ref.meta().model_dump(mode="json")}, default=str))


@queue_app.command("move")
def queue_move(job_id: str, priority: Priority = typer.Option(..., "--priority", "-p"),
               base_dir: Path = BaseDir) -> None:
    """Change a queued job's priority."""
    ref = _queue_call(_queue(base_dir).move, job_id, priority)
    out.print(f"{ref.id} -> {priority.value}")


@queue_app.command("remove")
def queue_remove(job_id: str, base_dir: Path = BaseDir) -> None:
    """Delete a job that is not active (its data file goes with it)."""
    _queue_call(_queue(base_dir).remove, job_id)
    out.print(f"removed {job_id}")


@queue_app.command("requeue")
def queue_requeue(job_id: str, priority: Priority | None = typer.Option(None, "--priority", "-p"),
                  base_dir: Path = BaseDir) -> None:
    """Queue a failed or done job again (attempts reset; the history is kept)."""
    ref = _queue_call(_queue(base_dir).requeue, job_id, priority)
    out.print(f"requeued {ref.id} ({ref.priority.value if ref.priority else ''})")


# ------------------------------------------------------------------ models
def _bytes(n: int) -> str:
    for unit, k in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _lifecycle_call(fn, *args: Any, **kw: Any) -> Any:
    from trainerd.lifecycle import LifecycleError

    try:
        return fn(*args, **kw)
    except LifecycleError as e:
        _fail(str(e))


def _record(layout: Layout, kind: str, **data: Any) -> None:
    """History in state.db; never a reason for a command to fail."""
    try:
        from trainerd.ledger import Ledger

        ledger = Ledger(layout.state_db)
        ledger.event(kind, None, **data)
        ledger.close()
    except Exception:
        pass


@models_app.command("list")
def models_list(base_dir: Path = BaseDir, as_json: bool = typer.Option(False, "--json")) -> None:
    """Model versions, oldest first; * marks the current one, ! a damaged one."""
    from trainerd.lifecycle import list_versions

    versions = list_versions(_layout(base_dir))
    if as_json:
        out.print_json(json.dumps([v.to_dict() for v in versions], default=str))
        return
    t = Table()
    for col in ("", "version", "kind", "parent", "loads on", "jobs", "size", "created"):
        t.add_column(col)
    for v in versions:
        t.add_row("*" if v.current else "!" if v.problem else "", v.name, str(v.kind), str(v.parent),
                  v.needs or ("base_model" if v.kind == "adapter" else "-"),
                  ", ".join(j.get("name", j.get("id", "?")) for j in v.jobs), _bytes(v.bytes),
                  _ago(v.created_at))
    out.print(t)
    if not any(v.current for v in versions):
        out.print("current: base (no job has finished yet, or rolled back to base)")
    for v in versions:
        if v.problem:
            err.print(f"[red]damaged[/] {v.name}: {escape(v.problem)}", highlight=False)


@models_app.command("show")
def models_show(version: str = typer.Argument("current"), base_dir: Path = BaseDir,
                as_json: bool = typer.Option(False, "--json")) -> None:
    """One version with every file checked against its manifest (sha256); exit 1 if damaged."""
    from trainerd.lifecycle import show

    info = _lifecycle_call(show, _layout(base_dir), version)
    if as_json:
        out.print_json(json.dumps(info, default=str))
    else:
        state = "[green]ok[/]" if info["ok"] else "[bold red]DAMAGED[/]"
        out.print(f"{info['name']}{' (current)' if info['current'] else ''}: {info['kind']}, {state}")
        out.print(f"  parent {info['parent']}; chain {' <- '.join(info['chain'])}")
        if info["kind"] == "adapter":
            out.print(f"  loads on {info['base']}")
        out.print(f"  jobs: {', '.join(j.get('name', j.get('id', '?')) for j in info['jobs']) or '-'}")
        out.print(f"  {_bytes(info['bytes'])}, created {_ago(info['created_at'])}, {info['path']}")
        if info["snapshots"]:
            out.print(f"  snapshots: {', '.join(info['snapshots'])}")
        for p in info["problems"]:
            out.print(f"  [red]problem:[/] {escape(p)}", highlight=False)
    raise typer.Exit(0 if info["ok"] else 1)


@models_app.command("rollback")
def models_rollback(version: str = typer.Argument(..., help="vNNNN, or base"), base_dir: Path = BaseDir) -> None:
    """Make VERSION current; nothing is deleted. The next job trains from it."""
    from trainerd.lifecycle import rollback

    layout = _layout(base_dir)
    r = _lifecycle_call(rollback, layout, version)
    _record(layout, "rollback", **r)
    out.print(f"current: {r['from']} -> {r['to']}; the next job trains from {r['to']}")


@models_app.command("export")
def models_export(
    version: str = typer.Argument(..., help="vNNNN or current"),
    dest: Path = typer.Argument(..., help="a new (or empty) folder"),
    merged: bool = typer.Option(False, "--merged", help="merge an adapter into its base: full weights "
                                "(loads the model, so it takes a while)"),
    base_dir: Path = BaseDir,
) -> None:
    """Copy a version out, loadable with plain transformers / peft."""
    from trainerd.lifecycle import export

    r = _lifecycle_call(export, _layout(base_dir), version, dest, merged)
    out.print(f"exported {r['version']} ({r['kind']}{', merged' if r.get('merged') else ''}) to {r['path']}")
    if r.get("base") and not r.get("merged"):
        out.print(f"loads on {r['base']} (written into adapter_config.json)")


@models_app.command("snapshot")
def models_snapshot(base_dir: Path = BaseDir) -> None:
    """Snapshot the current version now, into snapshots/<today>/ (once per day)."""
    from trainerd.lifecycle import snapshot

    r = _lifecycle_call(snapshot, _layout(base_dir))
    out.print(f"{r['status']}: {r.get('path') or r.get('same_as') or r.get('reason')}")


@app.command()
def gc(
    base_dir: Path = BaseDir,
    dry_run: bool = typer.Option(False, "--dry-run", help="only list what would be deleted"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Apply [retention]: old versions, snapshots, done jobs' data. Never the current
    version, its chain back to the last full version, or what a snapshot needs."""
    from trainerd.lifecycle import gc as collect

    layout = _layout(base_dir)
    try:
        policy = load_config(layout.config).retention
    except ConfigError as e:
        _fail(str(e), 2)
    plan = _lifecycle_call(collect, layout, policy, dry_run)
    if not dry_run:
        _record(layout, "gc", items=len(plan.delete), freed=plan.freed, errors=plan.errors)
    if as_json:
        out.print_json(json.dumps(plan.to_dict(), default=str))
        raise typer.Exit(1 if plan.errors else 0)
    verb = "would delete" if dry_run else "deleted"
    for i in plan.delete:
        files = f" ({', '.join(i.files)})" if i.files else ""
        out.print(f"{verb} {i.what} {i.path}{files}, {_bytes(i.bytes)}: {i.why}", highlight=False)
    for name, why in plan.protected.items():
        out.print(f"kept {name}: {why}")
    for note in plan.notes:
        out.print(f"[yellow]note:[/] {note}")
    out.print(f"{verb} {len(plan.delete)} item(s), {_bytes(plan.freed)}")
    for e in plan.errors:
        err.print(f"[red]error:[/] {escape(e)}", highlight=False)
    raise typer.Exit(1 if plan.errors else 0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
