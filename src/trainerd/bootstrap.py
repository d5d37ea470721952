"""`trainerd init`: the on-disk layout, a commented config, optionally a tiny local model."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from trainerd.config import DEFAULT_TOML
from trainerd.paths import Layout

TINY_DIR = "tiny-model"


def samples_dir() -> Path:
    return Path(str(resources.files("trainerd") / "samples"))


def init_base(base: Path, *, tiny_model: bool = False, base_model: str | None = None,
              warm_steps: int = 300, force: bool = False,
              on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """on_step(done, total): the tiny model's warm-up progress, for a progress bar."""
    layout = Layout.at(base)
    layout.ensure()
    info: dict[str, Any] = {"base_dir": str(layout.base)}
    if tiny_model:
        target = layout.base / TINY_DIR
        if not (target / "config.json").exists() or force:
            from trainerd.worker.tiny import build_tiny_model  # torch: only on this path

            shutil.rmtree(target, ignore_errors=True)
            info["tiny_model"] = build_tiny_model(target, samples_dir=samples_dir(),
                                                  warm_steps=warm_steps, on_step=on_step)
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
