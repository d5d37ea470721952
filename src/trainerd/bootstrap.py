"""`trainerd init`: the on-disk layout, a commented config, optionally a tiny local model
(built by trainerd.worker.tiny in a child process: this one never imports torch)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from trainerd import children
from trainerd.config import DEFAULT_TOML
from trainerd.paths import Layout

TINY_DIR = "tiny-model"


def samples_dir() -> Path:
    return Path(str(resources.files("trainerd") / "samples"))


def init_base(base: Path, *, tiny_model: bool = False, base_model: str | None = None,
              warm_steps: int = 300, force: bool = False,
              on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """on_step(done, total): the tiny model's warm-up progress, for a progress bar.
    children.ChildFailed (its sentence and exit status) when the tiny model cannot be built."""
    layout = Layout.at(base)
    layout.ensure()
    info: dict[str, Any] = {"base_dir": str(layout.base)}
    if tiny_model:
        target = layout.base / TINY_DIR
        if not (target / "config.json").exists() or force:
            shutil.rmtree(target, ignore_errors=True)
            info["tiny_model"] = children.run(
                [sys.executable, "-m", "trainerd.worker.tiny", str(target), "--samples-dir", str(samples_dir()),
                 "--warm-steps", str(warm_steps)], "building the tiny model", on_progress=on_step)
        base_model = TINY_DIR
    if layout.config.exists() and not force:
        info["config"] = f"{layout.config} exists; left as it is"
    else:
        from trainerd import atomic

        atomic.write_text(layout.config, DEFAULT_TOML.format(
            base_model=base_model or "CHANGE-ME",
            # A 175k-parameter model needs a far larger step than a real one to move in a demo.
            learning_rate="2e-3" if tiny_model else "2e-4",
        ))
        info["config"] = str(layout.config)
    return info


def copy_samples(base: Path) -> list[str]:
    """Deliver the shipped sample files into the inbox, Maildir style (write, then rename)."""
    layout = Layout.at(base)
    out = []
    for src in sorted(samples_dir().glob("*.jsonl")):
        tmp = layout.inbox / f".{src.name}.part"
        shutil.copyfile(src, tmp)
        tmp.rename(layout.inbox / src.name)
        out.append(src.name)
    return out
