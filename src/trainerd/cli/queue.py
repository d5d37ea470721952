"""`trainerd queue add/list/show/move/remove/requeue`: the job queue, safe while the daemon
runs (every change goes through trainerd.queue.Queue)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from trainerd.cli.base import BaseDir, err, fail, layout_of, out
from trainerd.config import ConfigError, DataMapConfig, QueueConfig, load_config
from trainerd.humanize import ago
from trainerd.jobs import JobState, Priority
from trainerd.names import printable


def _queue(base_dir: Path):
    from trainerd.ledger import Ledger
    from trainerd.queue import Queue

    layout = layout_of(base_dir)
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
        fail(str(e))


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
                  str(r.get("examples", "")), str(r.get("attempts", "")), ago(r.get("submitted_at")),
                  r.get("waiting") or "")
    out.print(t)


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


def queue_move(job_id: str, priority: Priority = typer.Option(..., "--priority", "-p"),
               base_dir: Path = BaseDir) -> None:
    """Change a queued job's priority (ID: an id, a unique id prefix, or the file name)."""
    q = _queue(base_dir)
    ref = _queue_call(q.move, _job(q, job_id), priority)
    out.print(f"{ref.id} -> {priority.value}")


def queue_remove(job_id: str, base_dir: Path = BaseDir) -> None:
    """Delete a job that is not active (its data file goes with it)."""
    q = _queue(base_dir)
    job_id = _job(q, job_id)
    _queue_call(q.remove, job_id)
    out.print(f"removed {job_id}")


def queue_requeue(job_id: str, priority: Priority | None = typer.Option(None, "--priority", "-p"),
                  base_dir: Path = BaseDir) -> None:
    """Queue a failed or done job again (attempts reset; the history is kept)."""
    q = _queue(base_dir)
    ref = _queue_call(q.requeue, _job(q, job_id), priority)
    out.print(f"requeued {ref.id} ({ref.priority.value if ref.priority else ''})")


