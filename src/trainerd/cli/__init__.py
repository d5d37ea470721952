"""The `trainerd` command: a thin Typer app; each command calls one library function.

Nothing here imports torch (not even lazily): a command that needs a model runs the
worker's code in a child process, so `status`, `queue`, `pause` & co. answer at once and a
crash while loading a model is the child's. Errors are printed as one sentence with what to
do, and exit non-zero (trainerd.cli.base.fail).

The commands live by family: prepare (init, validate), daemon (run, status, systemd-unit,
pause/resume/stop/skip), queue, models (+ gc), ask (generate, chat, compare). They are
registered here, in the order `trainerd --help` lists them.
"""

from __future__ import annotations

import typer

from trainerd.cli import ask, daemon, models, prepare, queue
from trainerd.cli.base import out

# add_completion: --install-completion / --show-completion for bash, zsh, fish, PowerShell.
app = typer.Typer(add_completion=True, no_args_is_help=True,
                  help="Keep a language model learning from files dropped into a folder.")
queue_app = typer.Typer(no_args_is_help=True, help="Inspect and edit the job queue (safe while the daemon runs).")
models_app = typer.Typer(no_args_is_help=True, help="Model versions.")
app.add_typer(queue_app, name="queue")
app.add_typer(models_app, name="models")


def _version(show: bool) -> None:
    if show:
        from trainerd import __version__

        out.print(f"trainerd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Keep a language model learning from files dropped into a folder."""


for command in (prepare.init, daemon.run, daemon.status, prepare.validate):
    app.command()(command)
app.command("systemd-unit")(daemon.systemd_unit)
for command in (daemon.pause, daemon.resume, daemon.stop, daemon.skip):
    app.command()(command)
for name in ("add", "list", "show", "move", "remove", "requeue"):
    queue_app.command(name)(getattr(queue, f"queue_{name}"))
for name in ("list", "show", "rollback", "export", "snapshot"):
    models_app.command(name)(getattr(models, f"models_{name}"))
for command in (models.gc, ask.generate, ask.chat, ask.compare):
    app.command()(command)


def main() -> None:
    app()
