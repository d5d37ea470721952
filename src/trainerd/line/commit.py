"""Adding a version to the line: number it, let the worker write the weights into a temp
folder, write the manifest last, rename it into place and (unless the eval gate holds it)
move `current`. The weights themselves are trainerd.worker's: it passes `save`."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainerd import __version__, atomic, gate
from trainerd.config import load_config
from trainerd.jobs import JobMeta
from trainerd.line.lock import models_lock
from trainerd.line.refs import ModelRef, current, set_current
from trainerd.line.versions import next_name
from trainerd.paths import Layout

log = logging.getLogger("trainerd.line.commit")

# save(folder) writes weights + tokenizer into `folder` and says what it wrote: "adapter"
# (weights that load on the parent's base) or "full".
Save = Callable[[Path], str]


def commit(layout: Layout, save: Save, parent: ModelRef, meta: JobMeta,
           extra: dict[str, Any] | None = None, make_current: bool = True,
           preempted_by: str | None = None) -> str:
    """Write the next version from `save` and make it current, atomically
    (make_current=False: the eval gate holds it; it is written and verified, not current).

    Under the models lock (snapshot, gc, rollback, consolidation take it too): the version
    is numbered, and `current` moves, only if it is still the parent this job trained from.
    A job a higher-priority one preempted (`preempted_by`, queue.preempt) whose parent is no
    longer current is written held instead (docs/DECISIONS.md)."""
    with models_lock(layout, f"publish {meta.id}", timeout=600):
        now = current(layout, load_config(layout.config))
        if now.version != parent.version and preempted_by is not None:
            jobs = [str(j.get("id")) for j in now.manifest.get("jobs", [])]
            extra = {**(extra or {}), "gate": gate.preempted_hold(parent.version, now.version, jobs, preempted_by,
                                                                  (extra or {}).get("gate"))}
            return _commit_locked(layout, save, parent, meta, extra, make_current=False)
        if now.version != parent.version:
            raise RuntimeError(f"current moved from {parent.version} to {now.version} while {meta.id} trained; "
                               "not publishing over it (the retry trains from the new current)")
        return _commit_locked(layout, save, parent, meta, extra, make_current)


def _commit_locked(layout: Layout, save: Save, parent: ModelRef, meta: JobMeta,
                   extra: dict[str, Any] | None, make_current: bool) -> str:
    name = next_name(layout)
    tmp = layout.models / f"{atomic.TMP_PREFIX}{name}-{meta.id}"
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from a crash mid-publish
    try:
        kind = save(tmp)
        if kind not in ("adapter", "full"):
            raise ValueError(f"save() wrote {kind!r}; expected 'adapter' or 'full'")
        jobs = [{"id": meta.id, "name": meta.original_name, "examples": meta.examples}]
        atomic.make_readable(tmp)  # a serving user reads versions (safetensors are written 0600)
        atomic.write_manifest(tmp, {
            "version": name,
            "parent": parent.version,
            "kind": kind,
            "base": parent.base if kind == "adapter" else None,
            "jobs": jobs,
            "created_at": time.time(),
            "trainerd_version": __version__,
            **(extra or {}),
        })
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save leaves nothing behind
        raise
    atomic.rename(tmp, layout.models / name)
    if not make_current:
        # Held: read back and hashed now, so a later override makes a sound version current.
        atomic.verify_manifest(layout.models / name, check_hashes=True)
        log.info("wrote %s (parent %s), held: current does not move (%s)", name, parent.version,
                 ((extra or {}).get("gate") or {}).get("verdict", "the eval gate"))
        return name
    set_current(layout, name)
    log.info("published %s (parent %s)", name, parent.version)
    return name
