"""What every command family shares: the consoles, the --base-dir option, failing with one
sentence, and the little formatters (ages, losses, sizes, progress)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from trainerd.paths import Layout

out = Console(soft_wrap=True)  # never hard-wrap paths or messages; tables still fit
err = Console(stderr=True, soft_wrap=True)

BaseDir = typer.Option(
    Path(os.environ.get("TRAINERD_BASE_DIR", ".")), "--base-dir", "-b",
    help="trainerd's base directory (env TRAINERD_BASE_DIR)",
)


def fail(msg: str, code: int = 1) -> NoReturn:
    """The one way a command gives up: `error: <sentence>` on stderr, exit `code`."""
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False)
    raise typer.Exit(code)


def layout_of(base: Path, must_exist: bool = True) -> Layout:
    layout = Layout.at(base)
    if must_exist and not layout.config.exists():
        fail(f"{layout.base} is not a trainerd base dir (no trainerd.toml); "
             f"create one with `trainerd init --base-dir {base}`")
    return layout


def loss(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


@contextlib.contextmanager
def progress(what: str, total: int) -> Iterator[Callable[[int, int], Any] | None]:
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
def busy(what: str) -> Iterator[None]:
    """A spinner on a terminal's stderr; one plain line where stderr is a file or a pipe."""
    if err.is_terminal:
        with err.status(what):
            yield
    else:
        err.print(what, highlight=False)
        yield
