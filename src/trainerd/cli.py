"""The `trainerd` command: a thin Typer app; each command calls one library function.

Nothing here imports torch at module level, so `status`, `queue`, `pause` & co. answer at
once. Errors are printed as one sentence with what to do, and exit non-zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainerd import control
from trainerd.config import ConfigError, DataMapConfig, QueueConfig, load_config
from trainerd.jobs import JobState, Priority
from trainerd.names import printable
from trainerd.paths import Layout

# add_completion: --install-completion / --show-completion for bash, zsh, fish, PowerShell.
app = typer.Typer(add_completion=True, no_args_is_help=True,
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


def _version(show: bool) -> None:
    if show:
        from trainerd import __version__

        out.print(f"trainerd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Keep a language model learning from files dropped into a folder."""


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


@contextlib.contextmanager
def _progress(what: str, total: int):
    """A progress bar on stderr; yields on_step(done, total). Nothing drawn for total 0."""
    if total <= 0:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    # Not transient: where stderr is a log, not a terminal, the finished bar is printed once.
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done, _total: bar.update(task, completed=done)


@contextlib.contextmanager
def _busy(what: str):
    """A spinner on a terminal's stderr; one plain line where stderr is a file or a pipe."""
    if err.is_terminal:
        with err.status(what):
            yield
    else:
        err.print(what, highlight=False)
        yield


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

    with _progress("warming the tiny model", warm_steps if tiny_model else 0) as step:
        info = init_base(base_dir, tiny_model=tiny_model, base_model=base_model,
                         warm_steps=warm_steps, force=force, on_step=step)
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
    log_format: str = typer.Option("text", help="text or json (json records carry job_id, attempt, version)"),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Run the daemon in the foreground (systemd runs it like this)."""
    from trainerd import oplog
    from trainerd.lock import AlreadyRunning
    from trainerd.preflight import PreflightError
    from trainerd.supervisor import run_daemon

    layout = _layout(base_dir)
    try:
        oplog.setup(layout.logs, log_format, verbose)
    except oplog.LogFormatError as e:
        _fail(str(e), 2)
    try:
        code = run_daemon(base_dir, once=once)
    except (ConfigError, PreflightError) as e:
        _fail(str(e), 2)
    except AlreadyRunning as e:
        _fail(str(e), 3)
    raise typer.Exit(code)


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
    for hook, o in sorted(((s.get("publish") or {}).get("last") or {}).items()):
        state = "[green]ok[/]" if o.get("ok") else f"[red]failed[/] ({escape(str(o.get('error')))})"
        out.print(f"publish {hook}: {o.get('version')} {state}, {o.get('attempts')} attempt(s), {_ago(o.get('at'))}",
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
            cut = ", ".join(f"{j[k]} {k}" for k in ("sequences", "dropped", "truncated")
                            if j.get(k) and (k != "sequences" or j[k] != j["examples"]))
            t.add_row(escape(printable(str(j["name"]))), str(j["examples"]) + (f" ({cut})" if cut else ""), str(j["steps_done"]),
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
    files: list[Path] = typer.Argument(..., help=".jsonl / .json files to check"),
    base_dir: Path | None = typer.Option(
        None, "--base-dir", "-b",
        help="check as this base dir's daemon would: its [data.map], and token lengths with its model "
             "(default: $TRAINERD_BASE_DIR or the current directory, when it holds a trainerd.toml)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Give a file the daemon's verdict before you drop it; exit 1 if the daemon would fail it."""
    from trainerd.validate import check_file

    layout = _validate_base(base_dir)
    data_map = DataMapConfig()
    if layout is not None:
        try:
            data_map = load_config(layout.config).data.map
        except ConfigError as e:
            _fail(str(e), 2)
    reports = [check_file(f, data_map) for f in files]
    if layout is None:
        for r in reports:
            r.not_checked = ["token lengths and train.overlength (they need the model's tokenizer)",
                             "[data.map] (your own key names)"]
    elif any(r.ok for r in reports):
        _token_verdicts(layout, [r for r in reports if r.ok])
    if as_json:
        out.print_json(json.dumps([r.to_dict() for r in reports]))
    else:
        for r in reports:
            _print_report(r)
        if layout is None:
            err.print(escape("note: no trainerd.toml here, so token lengths, train.overlength and [data.map] "
                             "were not checked; pass -b BASE (or set TRAINERD_BASE_DIR) for the daemon's "
                             "full verdict"), highlight=False)
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


def _validate_base(base_dir: Path | None) -> Layout | None:
    """-b, else $TRAINERD_BASE_DIR or the current directory when it holds a trainerd.toml."""
    if base_dir is not None:
        return _layout(base_dir)
    layout = Layout.at(Path(os.environ.get("TRAINERD_BASE_DIR", ".")))
    return layout if layout.config.exists() else None


def _print_report(r: Any) -> None:
    if not r.ok:
        out.print(f"[red]bad[/]  {escape(r.path)}: {escape(r.reason())}", highlight=False)
        return
    fmts = ", ".join(f"{k} {v}" for k, v in r.formats.items())
    out.print(f"[green]ok[/]   {escape(r.path)}: {r.examples} examples ({fmts})", highlight=False)
    t = r.tokens
    if not t:
        return
    out.print(f"       trains {t['sequences']} sequences, {t['tokens']} tokens; "
              f"{t['dropped']} dropped, {t['truncated']} truncated (train.overlength = '{t['overlength_policy']}', "
              f"max_seq_len {t['max_seq_len']})")
    for k in ("prompt_tokens", "trained_tokens"):
        s = t[k]
        out.print(f"       {k.replace('_', ' ')}: min {s['min']}, mean {s['mean']}, p95 {s['p95']}, max {s['max']}")


def _token_verdicts(layout: Layout, reports: list) -> None:
    """The tokenizing stage's verdict on each file, from the stage's own code in a child
    process (this process never imports the training stack)."""
    import subprocess
    import sys

    from trainerd.jobs import child_env

    size = sum(os.path.getsize(r.path) for r in reports if os.path.isfile(r.path))
    # Loading the model and tokenizing a large file takes a while: say so on stderr.
    with _busy(f"tokenizing {len(reports)} file(s), {size / 1e6:.1f} MB, with the model "
               "(token lengths, train.overlength)…"):
        proc = subprocess.run(
            [sys.executable, "-m", "trainerd.worker.tokenize", "--check", "--base-dir", str(layout.base),
             *(r.path for r in reports)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=child_env())
    verdicts = {}
    for line in proc.stdout.splitlines():
        with contextlib.suppress(ValueError):
            v = json.loads(line)
            verdicts[v["path"]] = v
    for r in reports:
        v = verdicts.get(r.path)
        if v is None:
            tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            r.file_error = f"the model could not be loaded to check token lengths: {tail[0]}"
        elif v["ok"]:
            r.tokens = v["tokens"]
        else:
            r.file_error = v["reason"]


@app.command("systemd-unit")
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

    layout = _layout(base_dir)
    try:
        u, g = resolve_user(user, group, as_root, user_unit)
    except UnitError as e:
        _fail(str(e), 2)
    has_gpu = os.path.exists("/dev/nvidiactl") if gpu is None else gpu
    print(unit(UnitSpec(layout.base, u, g, user_unit, stop_timeout, start_timeout, gpu=has_gpu)), end="")


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
        full = load_config(layout.config)
        cfg, data_map = full.queue, full.data.map
    except ConfigError:
        cfg, data_map = QueueConfig(), DataMapConfig()
    return Queue(layout, cfg, on_event=sink, data_map=data_map)


def _job(q: Any, text: str) -> str:
    """ID as the user typed it: a full id, a unique prefix, or the original file name."""
    from trainerd.lookup import resolve

    return _queue_call(resolve, q, text)


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
    # Full ids, never cut: what is shown here is what show/move/remove accept.
    t.add_column("id", no_wrap=True, overflow="fold", min_width=len(rows[0]["id"]) if rows else None)
    for col in ("name", "state", "priority", "examples", "attempts", "age", "waiting"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["id"], escape(printable(str(r.get("name", "?")))), r["state"], r.get("priority", "-"),
                  str(r.get("examples", "")), str(r.get("attempts", "")), _ago(r.get("submitted_at")),
                  r.get("waiting") or "")
    out.print(t)


@queue_app.command("show")
def queue_show(job_id: str, base_dir: Path = BaseDir) -> None:
    """Everything about one job: metadata, attempts, error."""
    from trainerd import oplog
    from trainerd.jobs import WORKER_LOG
    from trainerd.status import job_summary

    q = _queue(base_dir)
    ref = _queue_call(q.find, _job(q, job_id))
    log_path = ref.path / WORKER_LOG
    out.print_json(json.dumps({"summary": job_summary(ref), "job": ref.meta().model_dump(mode="json"),
                               "worker_log": str(log_path) if log_path.exists() else None}, default=str))
    last = oplog.tail(log_path) if log_path.exists() else None
    if last is not None:  # on stderr: stdout stays one JSON document
        err.print(f"--- {log_path} (last lines) ---", highlight=False)
        err.print(escape(last), highlight=False)


@queue_app.command("move")
def queue_move(job_id: str, priority: Priority = typer.Option(..., "--priority", "-p"),
               base_dir: Path = BaseDir) -> None:
    """Change a queued job's priority (ID: an id, a unique id prefix, or the file name)."""
    q = _queue(base_dir)
    ref = _queue_call(q.move, _job(q, job_id), priority)
    out.print(f"{ref.id} -> {priority.value}")


@queue_app.command("remove")
def queue_remove(job_id: str, base_dir: Path = BaseDir) -> None:
    """Delete a job that is not active (its data file goes with it)."""
    q = _queue(base_dir)
    job_id = _job(q, job_id)
    _queue_call(q.remove, job_id)
    out.print(f"removed {job_id}")


@queue_app.command("requeue")
def queue_requeue(job_id: str, priority: Priority | None = typer.Option(None, "--priority", "-p"),
                  base_dir: Path = BaseDir) -> None:
    """Queue a failed or done job again (attempts reset; the history is kept)."""
    q = _queue(base_dir)
    ref = _queue_call(q.requeue, _job(q, job_id), priority)
    out.print(f"requeued {ref.id} ({ref.priority.value if ref.priority else ''})")


# ------------------------------------------------------------------ models
def _bytes(n: int) -> str:
    for unit, k in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _lifecycle_call(fn, *args: Any, **kw: Any) -> Any:
    from trainerd.line.errors import LineError

    try:
        return fn(*args, **kw)
    except LineError as e:
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
def models_list(base_dir: Path = BaseDir, as_json: bool = typer.Option(False, "--json"),
                limit: int = typer.Option(30, "--limit", "-n", min=1, help="the newest N versions (and the current)"),
                show_all: bool = typer.Option(False, "--all", help="every version")) -> None:
    """Model versions, oldest first; * marks the current one, ! a damaged one."""
    from trainerd import gate
    from trainerd.line.versions import list_versions
    from trainerd.line.versions import versions as version_names

    layout = _layout(base_dir)
    versions = list_versions(layout, None if show_all else limit)
    hidden = 0 if show_all else max(0, len(version_names(layout)) - len(versions))
    states = {v.name: gate.state(layout, v.name, v.extra) for v in versions}
    if as_json:
        out.print_json(json.dumps([{**v.to_dict(), "gate_state": states[v.name]} for v in versions], default=str))
        return
    t = Table()
    for col in ("", "version", "kind", "parent", "loads on", "jobs", "size", "created", "gate"):
        t.add_column(col)
    for v in versions:
        t.add_row("*" if v.current else "!" if v.problem else "", v.name, str(v.kind), str(v.parent),
                  v.needs or ("base_model" if v.kind == "adapter" else "-"),
                  ", ".join(j.get("name", j.get("id", "?")) for j in v.jobs), _bytes(v.bytes),
                  _ago(v.created_at), escape(_gate_cell(states[v.name], v.extra.get("gate"))))
    out.print(t)
    if hidden and not as_json:
        out.print(f"({hidden} older version(s) not shown; --all or --limit N)")
    if not any(v.current for v in versions):
        out.print("current: base (no job has finished yet, or rolled back to base)")
    for v in versions:
        if v.problem:
            err.print(f"[red]damaged[/] {v.name}: {escape(v.problem)}", highlight=False)


@models_app.command("show")
def models_show(version: str = typer.Argument("current"), base_dir: Path = BaseDir,
                as_json: bool = typer.Option(False, "--json")) -> None:
    """One version with every file checked against its manifest (sha256); exit 1 if damaged."""
    from trainerd.line.show import show

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
        _print_scores(info)
        for p in info["problems"]:
            out.print(f"  [red]problem:[/] {escape(p)}", highlight=False)
    raise typer.Exit(0 if info["ok"] else 1)


def _gate_cell(state: str, g: dict[str, Any] | None) -> str:
    if not state:
        return "" if not g else g.get("result", "")
    return f"{state.upper()}: {(g or {}).get('verdict', '')}"


def _print_scores(info: dict[str, Any]) -> None:
    """The gate's verdict, this version's row of the forgetting matrix, and the matrix."""
    g = info.get("extra", {}).get("gate")
    if g:
        out.print(f"  gate ({g.get('mode')}): {escape(str(g.get('verdict')))}"
                  + (escape(f" [{info['gate_state']}]") if info.get("gate_state") else ""), highlight=False)
    row, m = info.get("recall"), info.get("matrix") or {}
    if row:
        bwt = row.get("backward_transfer")
        out.print(f"  backward transfer {'-' if bwt is None else f'{bwt:+.4f}'} (negative: forgot earlier jobs); "
                  f"own job {_loss(row.get('before'))} -> {_loss(row['recall'].get(row['job']))}")
    if m.get("versions"):
        t = Table(title="forgetting matrix: loss of each version (row) on each job's recall sample")
        t.add_column("version")
        for j in m["jobs"]:
            t.add_column(m["names"].get(j, j)[:18])
        t.add_column("bwt")
        for r in m["versions"]:
            bwt = r.get("backward_transfer")
            t.add_row(r["version"] + (f" ({r['gate']})" if r.get("gate") else ""),
                      *[_loss(r["recall"].get(j)) for j in m["jobs"]], "-" if bwt is None else f"{bwt:+.3f}")
        out.print(t)


@models_app.command("rollback")
def models_rollback(version: str = typer.Argument(..., help="vNNNN, or base"), base_dir: Path = BaseDir,
                    force: bool = typer.Option(False, "--force", help="make a held version current even "
                                               "though its parent is no longer current")) -> None:
    """Make VERSION current; nothing is deleted. The next job trains from it. A version the
    eval gate held becomes current as a recorded override."""
    from trainerd.line.rollback import rollback

    layout = _layout(base_dir)
    r = _lifecycle_call(rollback, layout, version, force=force)
    _record(layout, "gate_override" if r.get("override") else "rollback", **r)
    if r.get("override"):
        out.print(f"override: {r['to']} was held by the eval gate ({escape(str(r.get('verdict')))})", highlight=False)
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
    from trainerd.line.export import export

    r = _lifecycle_call(export, _layout(base_dir), version, dest, merged)
    out.print(f"exported {r['version']} ({r['kind']}{', merged' if r.get('merged') else ''}) to {r['path']}")
    if r.get("base") and not r.get("merged"):
        out.print(f"loads on {r['base']} (written into adapter_config.json)")


@models_app.command("snapshot")
def models_snapshot(base_dir: Path = BaseDir) -> None:
    """Snapshot the current version now, into snapshots/<today>/ (once per day)."""
    from trainerd.line.snapshots import snapshot

    r = _lifecycle_call(snapshot, _layout(base_dir))
    out.print(f"{r['status']}: {r.get('path') or r.get('same_as') or r.get('reason')}")


@app.command()
def gc(
    base_dir: Path = BaseDir,
    dry_run: bool = typer.Option(False, "--dry-run", help="only list what would be deleted"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Apply \\[retention]: old versions, snapshots, done jobs' data. Never the current
    version, its chain back to the last full version, or what a snapshot needs."""
    from trainerd.line.retention import gc as collect

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


# ------------------------------------------------------------------ asking the model
Device = typer.Option("auto", "--device", help="auto, cpu or cuda; a GPU that is training is never shared")


def _ask(base_dir: Path, versions: list[str], device: str) -> Layout:
    """The checks that need no model, before a child process loads one (trainerd.ask)."""
    from trainerd.ask import check_version
    from trainerd.line.refs import NoSuchModel

    layout = _layout(base_dir)
    if device not in ("auto", "cpu", "cuda"):
        _fail(f"--device {device}: expected auto, cpu or cuda")
    for v in versions:
        try:
            check_version(layout, v)
        except NoSuchModel as e:
            _fail(str(e), 2)
        except ConfigError as e:
            _fail(str(e), 2)
    return layout


@app.command()
def generate(
    prompts: list[str] = typer.Argument(None, help="prompts, one answer each"),
    base_dir: Path = BaseDir,
    version: str = typer.Option("current", "--version", help="vNNNN, current, base, or a model folder"),
    file: Path | None = typer.Option(None, "--file", "-f", help="one prompt (text or chat JSON) per line"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy"),
    device: str = Device,
    as_json: bool = typer.Option(False, "--json", help="one JSON object per answer"),
) -> None:
    """Ask a model version: one answer per prompt, with its chat template, streamed."""
    from trainerd import ask

    layout = _ask(base_dir, [version], device)
    args = ["--version", version, *(["--file", str(file)] if file else []), *(["--json"] if as_json else []),
            "--", *(prompts or [])]
    raise typer.Exit(ask.run_attached(ask.command(layout, "generate", args, device=device,
                                                  max_new_tokens=max_new_tokens, temperature=temperature)))


@app.command()
def chat(
    version: str = typer.Argument("current", help="vNNNN, current, base, or a model folder"),
    base_dir: Path = BaseDir,
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
    device: str = Device,
) -> None:
    """Talk to a version, one stdin line per turn (a pipe works; EOF ends). /reset, /version V, /quit."""
    from trainerd import ask

    layout = _ask(base_dir, [version], device)
    raise typer.Exit(ask.run_attached(ask.command(layout, "chat", ["--version", version], device=device,
                                                  max_new_tokens=max_new_tokens, temperature=temperature)))


@app.command()
def compare(
    a: str = typer.Argument(..., help="the version compared against (e.g. v0003, base)"),
    b: str = typer.Argument("current", help="the version judged"),
    base_dir: Path = BaseDir,
    probe: Path | None = typer.Option(None, "--probe", help="probe set (default: eval.probe_file of the base dir)"),
    prompts: Path | None = typer.Option(None, "--prompts", help="prompts to answer side by side"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    device: str = Device,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Two versions side by side: answers, per-example probe loss, totals, better and worse."""
    import subprocess

    from trainerd import ask
    from trainerd.jobs import child_env

    layout = _ask(base_dir, [a, b], device)
    args = [a, b, *(["--probe", str(probe.resolve())] if probe else []),
            *(["--prompts", str(prompts.resolve())] if prompts else [])]
    p = subprocess.run(ask.command(layout, "compare", args, device=device, max_new_tokens=max_new_tokens),
                       stdout=subprocess.PIPE, text=True, env=child_env())  # stderr: progress, errors
    if p.returncode != 0:
        raise typer.Exit(p.returncode)
    result = json.loads(p.stdout.strip().splitlines()[-1])
    if as_json:
        out.print_json(json.dumps(result))
    else:
        ask.print_compare(out, result)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
