"""`trainerd models list/show/rollback/export/snapshot` and `trainerd gc`: the line of model
versions (trainerd.line does the work; this prints it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from trainerd.cli.base import BaseDir, err, fail, layout_of, loss, out
from trainerd.config import ConfigError, load_config
from trainerd.humanize import ago, human_bytes
from trainerd.paths import Layout


def _line_call(fn, *args: Any, **kw: Any) -> Any:
    from trainerd.line.errors import LineError

    try:
        return fn(*args, **kw)
    except LineError as e:
        fail(str(e))


def _record(layout: Layout, kind: str, **data: Any) -> None:
    """History in state.db; never a reason for a command to fail."""
    try:
        from trainerd.ledger import Ledger

        ledger = Ledger(layout.state_db)
        ledger.event(kind, None, **data)
        ledger.close()
    except Exception:
        pass


def models_list(base_dir: Path = BaseDir, as_json: bool = typer.Option(False, "--json"),
                limit: int = typer.Option(30, "--limit", "-n", min=1, help="the newest N versions (and the current)"),
                show_all: bool = typer.Option(False, "--all", help="every version")) -> None:
    """Model versions, oldest first; * marks the current one, ! a damaged one."""
    from trainerd import gate
    from trainerd.line.versions import list_versions
    from trainerd.line.versions import versions as version_names

    layout = layout_of(base_dir)
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
                  ", ".join(j.get("name", j.get("id", "?")) for j in v.jobs), human_bytes(v.bytes),
                  ago(v.created_at), escape(_gate_cell(states[v.name], v.extra.get("gate"))))
    out.print(t)
    if hidden and not as_json:
        out.print(f"({hidden} older version(s) not shown; --all or --limit N)")
    if not any(v.current for v in versions):
        out.print("current: base (no job has finished yet, or rolled back to base)")
    for v in versions:
        if v.problem:
            err.print(f"[red]damaged[/] {v.name}: {escape(v.problem)}", highlight=False)


def models_show(version: str = typer.Argument("current"), base_dir: Path = BaseDir,
                as_json: bool = typer.Option(False, "--json")) -> None:
    """One version with every file checked against its manifest (sha256); exit 1 if damaged."""
    from trainerd.line.show import show

    info = _line_call(show, layout_of(base_dir), version)
    if as_json:
        out.print_json(json.dumps(info, default=str))
    else:
        state = "[green]ok[/]" if info["ok"] else "[bold red]DAMAGED[/]"
        out.print(f"{info['name']}{' (current)' if info['current'] else ''}: {info['kind']}, {state}")
        out.print(f"  parent {info['parent']}; chain {' <- '.join(info['chain'])}")
        if info["kind"] == "adapter":
            out.print(f"  loads on {info['base']}")
        out.print(f"  jobs: {', '.join(j.get('name', j.get('id', '?')) for j in info['jobs']) or '-'}")
        out.print(f"  {human_bytes(info['bytes'])}, created {ago(info['created_at'])}, {info['path']}")
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
                  f"own job {loss(row.get('before'))} -> {loss(row['recall'].get(row['job']))}")
    if m.get("versions"):
        t = Table(title="forgetting matrix: loss of each version (row) on each job's recall sample")
        t.add_column("version")
        for j in m["jobs"]:
            t.add_column(m["names"].get(j, j)[:18])
        t.add_column("bwt")
        for r in m["versions"]:
            bwt = r.get("backward_transfer")
            t.add_row(r["version"] + (f" ({r['gate']})" if r.get("gate") else ""),
                      *[loss(r["recall"].get(j)) for j in m["jobs"]], "-" if bwt is None else f"{bwt:+.3f}")
        out.print(t)


def models_rollback(version: str = typer.Argument(..., help="vNNNN, or base"), base_dir: Path = BaseDir,
                    force: bool = typer.Option(False, "--force", help="make a held version current even "
                                               "though its parent is no longer current")) -> None:
    """Make VERSION current; nothing is deleted. The next job trains from it. A version the
    eval gate held becomes current as a recorded override."""
    from trainerd.line.rollback import rollback

    layout = layout_of(base_dir)
    r = _line_call(rollback, layout, version, force=force)
    _record(layout, "gate_override" if r.get("override") else "rollback", **r)
    if r.get("override"):
        out.print(f"override: {r['to']} was held by the eval gate ({escape(str(r.get('verdict')))})", highlight=False)
    out.print(f"current: {r['from']} -> {r['to']}; the next job trains from {r['to']}")


def models_export(
    version: str = typer.Argument(..., help="vNNNN or current"),
    dest: Path = typer.Argument(..., help="a new (or empty) folder"),
    merged: bool = typer.Option(False, "--merged", help="merge an adapter into its base: full weights "
                                "(loads the model, so it takes a while)"),
    base_dir: Path = BaseDir,
) -> None:
    """Copy a version out, loadable with plain transformers / peft."""
    from trainerd.line.export import export  # --merged: the merge runs in a worker child

    r = _line_call(export, layout_of(base_dir), version, dest, merged)
    out.print(f"exported {r['version']} ({r['kind']}{', merged' if r.get('merged') else ''}) to {r['path']}")
    if r.get("base") and not r.get("merged"):
        out.print(f"loads on {r['base']} (written into adapter_config.json)")


def models_snapshot(base_dir: Path = BaseDir) -> None:
    """Snapshot the current version now, into snapshots/<today>/ (once per day)."""
    from trainerd.line.snapshots import snapshot

    r = _line_call(snapshot, layout_of(base_dir))
    out.print(f"{r['status']}: {r.get('path') or r.get('same_as') or r.get('reason')}")


def gc(
    base_dir: Path = BaseDir,
    dry_run: bool = typer.Option(False, "--dry-run", help="only list what would be deleted"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Apply \\[retention]: old versions, snapshots, done jobs' data. Never the current
    version, its chain back to the last full version, or what a snapshot needs."""
    from trainerd.line.retention import gc as collect

    layout = layout_of(base_dir)
    try:
        policy = load_config(layout.config).retention
    except ConfigError as e:
        fail(str(e), 2)
    plan = _line_call(collect, layout, policy, dry_run)
    if not dry_run:
        _record(layout, "gc", items=len(plan.delete), freed=plan.freed, errors=plan.errors)
    if as_json:
        out.print_json(json.dumps(plan.to_dict(), default=str))
        raise typer.Exit(1 if plan.errors else 0)
    verb = "would delete" if dry_run else "deleted"
    for i in plan.delete:
        files = f" ({', '.join(i.files)})" if i.files else ""
        out.print(f"{verb} {i.what} {i.path}{files}, {human_bytes(i.bytes)}: {i.why}", highlight=False)
    for name, why in plan.protected.items():
        out.print(f"kept {name}: {why}")
    for note in plan.notes:
        out.print(f"[yellow]note:[/] {note}")
    out.print(f"{verb} {len(plan.delete)} item(s), {human_bytes(plan.freed)}")
    for e in plan.errors:
        err.print(f"[red]error:[/] {escape(e)}", highlight=False)
    raise typer.Exit(1 if plan.errors else 0)


