"""`trainerd generate`, `chat` and `compare`: asking a model version. The model loads in a
child process (trainerd.ask runs trainerd.worker.generate); this process never imports torch."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from trainerd.cli.base import BaseDir, fail, layout_of, out
from trainerd.paths import Layout

Device = typer.Option("auto", "--device", help="auto, cpu or cuda; a GPU that is training is never shared")


def _ask(base_dir: Path, device: str) -> Layout:
    """The checks this process can make; the child (trainerd.ask runs trainerd.worker.generate)
    checks the config and the versions before it imports torch, and says why with exit 2."""
    layout = layout_of(base_dir)
    if device not in ("auto", "cpu", "cuda"):
        fail(f"--device {device}: expected auto, cpu or cuda")
    return layout


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

    layout = _ask(base_dir, device)
    args = ["--version", version, *(["--file", str(file)] if file else []), *(["--json"] if as_json else []),
            "--", *(prompts or [])]
    raise typer.Exit(ask.run_attached(ask.command(layout, "generate", args, device=device,
                                                  max_new_tokens=max_new_tokens, temperature=temperature)))


def chat(
    version: str = typer.Argument("current", help="vNNNN, current, base, or a model folder"),
    base_dir: Path = BaseDir,
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
    device: str = Device,
) -> None:
    """Talk to a version, one stdin line per turn (a pipe works; EOF ends). /reset, /version V, /quit."""
    from trainerd import ask

    layout = _ask(base_dir, device)
    raise typer.Exit(ask.run_attached(ask.command(layout, "chat", ["--version", version], device=device,
                                                  max_new_tokens=max_new_tokens, temperature=temperature)))


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

    layout = _ask(base_dir, device)
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


