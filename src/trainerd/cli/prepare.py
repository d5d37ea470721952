"""`trainerd init` (a base dir, its config, optionally the tiny model) and `trainerd validate`
(the daemon's verdict on a file before it is dropped)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from trainerd import children
from trainerd.cli.base import BaseDir, busy, err, fail, layout_of, loss, out, progress
from trainerd.config import ConfigError, DataMapConfig, load_config
from trainerd.paths import Layout


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

    try:
        with progress("warming the tiny model", warm_steps if tiny_model else 0) as step:
            info = init_base(base_dir, tiny_model=tiny_model, base_model=base_model,
                             warm_steps=warm_steps, force=force, on_step=step)
    except children.ChildFailed as e:
        fail(str(e), e.exit_code)
    out.print(f"base dir: {info['base_dir']}\nconfig:   {info['config']}")
    if "tiny_model" in info:
        t = info["tiny_model"]
        out.print(f"tiny model: {t['params']:,} parameters, vocab {t['vocab']}, warmed {t['warm_steps']} steps "
                  f"(loss {loss(t['warm_loss_first'])} -> {loss(t['warm_loss_last'])})")
    if samples:
        out.print(f"samples in inbox/: {', '.join(copy_samples(base_dir))}")


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
            fail(str(e), 2)
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
        return layout_of(base_dir)
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
    with busy(f"tokenizing {len(reports)} file(s), {size / 1e6:.1f} MB, with the model "
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


