"""Checkpoints that are complete or invisible (DESIGN.md principle 4).

HF Trainer writes `checkpoint-N` into a staging folder without fsync or a completeness
marker, and on resume it loads whatever it finds. Here each save is committed: fsync
everything, write a manifest (sizes + sha256) last, rename to checkpoints/step-NNNNNN.
Resume takes the newest checkpoint whose manifest verifies; a bad one is set aside as
corrupt-… and named in the log, never loaded.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from trainerd import atomic

log = logging.getLogger("trainerd.worker.checkpoints")

DIR = "checkpoints"
STAGING = ".staging"
PREFIX = "step-"


def root(job_dir: Path) -> Path:
    return Path(job_dir) / DIR


def staging(job_dir: Path) -> Path:
    return root(job_dir) / STAGING


def _step(p: Path) -> int:
    return int(p.name[len(PREFIX):])


def committed(job_dir: Path) -> list[Path]:
    """Committed checkpoints, newest first, by step number (not string order)."""
    r = root(job_dir)
    if not r.is_dir():
        return []
    found = [p for p in r.iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=_step, reverse=True)


def commit(job_dir: Path, saved: Path, meta: dict[str, Any]) -> Path:
    step = int(meta["step"])
    dest = root(job_dir) / f"{PREFIX}{step:06d}"
    if dest.exists():  # the same step saved twice (e.g. a stop right after a periodic save)
        shutil.rmtree(saved)
        return dest
    atomic.write_manifest(saved, meta)
    atomic.rename(saved, dest)
    return dest


def _remove(path: Path) -> None:
    """Delete a directory without ever showing it half-deleted under its own name: rename
    it to a temp name first (rmtree is file by file; a kill midway would leave a step-N
    with files missing, which a resume sets aside as corrupt and keeps forever)."""
    doomed = path.with_name(f"{atomic.TMP_PREFIX}deleting-{path.name}-{time.time_ns()}")
    try:
        # Durable before the first delete: nothing else orders them, and a disk that wrote
        # back some deletes but not the rename showed step-N half-deleted after a power
        # cut (the power campaign, issue 20).
        atomic.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def prune(job_dir: Path, keep: int) -> None:
    for old in committed(job_dir)[keep:]:
        _remove(old)
    _sweep(job_dir)


def _sweep(job_dir: Path) -> None:
    """Finish deletions a killed worker left under temp names (of old checkpoints, or of
    the whole checkpoints folder of a finished job)."""
    for where in (root(job_dir), Path(job_dir)):
        for p in where.glob(f"{atomic.TMP_PREFIX}deleting-*") if where.is_dir() else []:
            shutil.rmtree(p, ignore_errors=True)


def latest_valid(job_dir: Path, expect: dict[str, Any] | None = None) -> tuple[Path | None, dict]:
    """Newest checkpoint that verifies (and matches `expect`, e.g. the same parent model).
    Bad ones are renamed corrupt-… (kept for inspection) and the next older one is tried."""
    _sweep(job_dir)
    leftover = staging(job_dir)
    if leftover.exists():
        log.warning("discarding half-written checkpoint(s) in %s: %s", leftover,
                    ", ".join(p.name for p in leftover.iterdir()) or "empty")
        shutil.rmtree(leftover)
    for ckpt in committed(job_dir):
        try:
            man = atomic.verify_manifest(ckpt)
        except atomic.ManifestError as e:
            aside = ckpt.with_name(f"corrupt-{ckpt.name}-{int(time.time())}")
            log.error("checkpoint %s is not usable (%s); set aside as %s", ckpt.name, e, aside.name)
            atomic.rename(ckpt, aside)
            continue
        mismatch = {k: (man.get(k), v) for k, v in (expect or {}).items() if man.get(k) != v}
        if mismatch:
            aside = ckpt.with_name(f"stale-{ckpt.name}-{int(time.time())}")
            log.warning("checkpoint %s was made for %s; set aside as %s and starting over",
                        ckpt.name, mismatch, aside.name)
            atomic.rename(ckpt, aside)
            continue
        return ckpt, man
    return None, {}


def trained_on(job_dir: Path) -> str | None:
    """The model version the newest committed checkpoint was trained from, or None. Read
    only (latest_valid verifies it later): a preempted job resumes on that version."""
    for ckpt in committed(job_dir):
        try:
            return str(atomic.read_json(ckpt / atomic.MANIFEST)["model_version"])
        except (OSError, ValueError, KeyError):
            continue
    return None


def clear(job_dir: Path) -> None:
    """A finished job keeps no checkpoints: its result is a published model version."""
    if root(job_dir).exists():
        _remove(root(job_dir))
    _sweep(job_dir)
