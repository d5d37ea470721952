"""Rollback: point `current` at an earlier version (or the base), atomically. Every
version is kept; the next job trains from the one chosen."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from trainerd import atomic, gate
from trainerd.line.errors import LineError
from trainerd.line.lock import models_lock, training_job
from trainerd.line.refs import set_current
from trainerd.line.versions import current_name, existing, problems, read_manifest
from trainerd.paths import Layout

log = logging.getLogger("trainerd.line.rollback")


def rollback(layout: Layout, name: str, *, lock_timeout: float = 10.0, force: bool = False) -> dict[str, Any]:
    """Point `current` at `name` (or "base"), atomically; every version is kept. The next
    job trains from it. Refused for a version (or its base) that does not verify, and
    while a worker is training (it would publish on top of the old current). A version the
    eval gate held becomes current as a recorded override; if its parent is no longer
    current that would drop later training, so it needs force."""
    job = training_job(layout)
    if job is not None:
        raise LineError(
            f"job {job} is training from {current_name(layout) or 'base'}; its result would undo "
            "the rollback. `trainerd pause`, wait for its checkpoint, roll back, then `trainerd resume` "
            "(the job then starts over on the version you chose)")
    with models_lock(layout, f"rollback to {name}", lock_timeout):
        before = current_name(layout)
        if name == "base":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(layout.current_model)
            atomic.fsync_dir(layout.models)
        else:
            name = existing(layout, name)
            found = problems(layout, name)
            if found:
                raise LineError(f"refusing to make {name} current: {'; '.join(found)}")
            man = read_manifest(layout.models / name) or {}
            override = gate.is_held(man)
            if override:
                why = gate.override_problem(man, name, before, force)
                if why:
                    raise LineError(why)
                gate.record_override(layout, name, before, force)
            set_current(layout, name)
            if override:
                log.warning("rollback: %s was held by the eval gate; made current as an override", name)
                return {"from": before or "base", "to": name, "override": True, "force": force,
                        "verdict": (gate.of_manifest(man) or {}).get("verdict")}
    log.info("rollback: current %s -> %s", before or "base", name)
    return {"from": before or "base", "to": name}

