"""Retention (`trainerd gc`, and the daily task): what may be deleted under the
`[retention]` limits, and deleting it. Never deleted: current, its parent chain back to
the last full version, the newest version number, or a version a kept snapshot or kept
adapter loads on. Done jobs lose only their data files; job.json and the curve stay."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.config import RetentionConfig
from trainerd.history import finished
from trainerd.jobs import DATA, JobState
from trainerd.line.lock import models_lock, training_job
from trainerd.line.replay import (
    DATA_REMOVED,
    REPLAY_JSON,
    REPLAY_JSONL,
    TOKENS_CACHE,
    TOKENS_REPLAY,
)
from trainerd.line.snapshots import list_snapshots
from trainerd.line.versions import (
    REJECTED,
    base_version,
    chain,
    current_name,
    read_manifest,
    size,
    versions,
)
from trainerd.paths import Layout

log = logging.getLogger("trainerd.line.retention")

TRASH = ".trash-"  # a folder being deleted: renamed first, so it vanishes at once
GB = 1024**3


@dataclass
class GcItem:
    what: str  # "version", "snapshot", "job data", "rejected", "leftover"
    path: str
    bytes: int
    why: str
    files: list[str] = field(default_factory=list)  # job data: only these go, job.json stays


@dataclass
class GcPlan:
    delete: list[GcItem]
    protected: dict[str, str]  # version -> why it is kept whatever the limits say
    notes: list[str]
    dry_run: bool
    errors: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(i.bytes for i in self.delete)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "freed": self.freed}


def _oldest_first_over(items: list[Any], size: Any, limit_gb: float) -> list[Any]:
    """Items (oldest first) to drop so the rest fits `limit_gb`; the newest always stays."""
    if not limit_gb:
        return []
    total, drop = sum(size(i) for i in items), []
    for i in items[:-1]:
        if total <= limit_gb * GB:
            break
        drop.append(i)
        total -= size(i)
    return drop


def plan_gc(layout: Layout, policy: RetentionConfig) -> GcPlan:
    delete: list[GcItem] = []
    notes: list[str] = []

    # Snapshots first: only the ones that stay can protect the version they need.
    snaps = list_snapshots(layout)
    keep_s = snaps[-policy.keep_snapshots:] if policy.keep_snapshots else list(snaps)
    for s in snaps:
        if s not in keep_s:
            delete.append(GcItem("snapshot", s["path"], s["bytes"], f"older than the newest {policy.keep_snapshots}"))
    for s in _oldest_first_over(keep_s, lambda s: s["bytes"], policy.max_snapshots_gb):
        keep_s.remove(s)
        delete.append(GcItem("snapshot", s["path"], s["bytes"], f"over max_snapshots_gb = {policy.max_snapshots_gb:g}"))

    names = versions(layout)
    mans = {n: read_manifest(layout.models / n) or {} for n in names}
    sizes = {n: size(layout.models / n) for n in names}

    def needs(n: str) -> str | None:
        return base_version(layout, mans[n].get("base")) if mans[n].get("kind") == "adapter" else None

    protected: dict[str, str] = {}
    cur = current_name(layout)
    if cur in mans:
        for i, n in enumerate(chain(layout, cur)):
            protected.setdefault(n, "current" if i == 0 else f"parent chain of current ({cur})")
    if names:
        protected.setdefault(names[-1], "newest number (version names are never reused)")
    for s in keep_s:
        if s.get("needs") in mans:
            protected.setdefault(s["needs"], f"needed by snapshot {s['name']}")
    for n in list(protected):  # what a protected adapter loads on is protected too
        if needs(n) in mans:
            protected.setdefault(needs(n), f"base of {n}")

    keep = set(protected) | set(names[-policy.keep_versions:] if policy.keep_versions else names)
    keep |= {needs(n) for n in keep if needs(n) in mans}  # a kept adapter keeps its base
    if policy.max_models_gb:
        while sum(sizes[n] for n in keep) > policy.max_models_gb * GB:
            bases = {needs(n) for n in keep}
            cands = [n for n in names if n in keep and n not in protected and n not in bases]
            if not cands:
                notes.append(f"models/ stays over max_models_gb = {policy.max_models_gb:g}: "
                             "what is left is protected")
                break
            keep.discard(cands[0])
    for n in names:
        if n not in keep:
            why = (f"older than the newest {policy.keep_versions}"
                   if policy.keep_versions and n not in names[-policy.keep_versions:]
                   else f"over max_models_gb = {policy.max_models_gb:g}")
            delete.append(GcItem("version", str(layout.models / n), sizes[n], why))

    # Rejected consolidations: the newest few are kept for a person to look at.
    if layout.models.is_dir():
        rejected = sorted((p for p in layout.models.iterdir() if p.name.startswith(REJECTED)),
                          key=lambda p: p.stat().st_mtime)
        for p in rejected[:max(0, len(rejected) - policy.keep_rejected)]:
            delete.append(GcItem("rejected", str(p), size(p), f"beyond keep_rejected = {policy.keep_rejected}"))
    delete += _leftovers(layout)
    delete += _done_data(layout, policy)
    return GcPlan(delete, protected, notes, dry_run=True)


def _leftovers(layout: Layout) -> list[GcItem]:
    """Half-done work of crashed processes: our own deletions, snapshots, and (when no
    worker trains, so no publish can be in progress) unfinished publishes."""
    out = []
    snaps = layout.snapshots
    for p in sorted(snaps.iterdir()) if snaps.is_dir() else []:
        if p.name.startswith((TRASH, atomic.TMP_PREFIX, "corrupt-")):
            out.append(GcItem("leftover", str(p), size(p), "unfinished or damaged snapshot"))
    training = training_job(layout) is not None
    for p in sorted(layout.models.iterdir()) if layout.models.is_dir() else []:
        if p.name.startswith(TRASH) or (p.name.startswith(atomic.TMP_PREFIX) and not training):
            out.append(GcItem("leftover", str(p), size(p), "unfinished publish or deletion"))
    return out


def _done_data(layout: Layout, policy: RetentionConfig) -> list[GcItem]:
    """Data files of finished jobs beyond the limits; job.json and the loss curve stay."""
    if not layout.done.is_dir():
        return []
    jobs = []
    # Oldest finish first: "the newest N done jobs" are the N that finished last, not the
    # N that arrived last (a requeued job finishes long after it arrived).
    for d in [r.path for r in reversed(finished(layout, (JobState.DONE,)).refs)]:
        files = [d / f for f in (DATA, REPLAY_JSONL, REPLAY_JSON, TOKENS_CACHE, TOKENS_REPLAY) if os.path.lexists(d / f)]
        if files:
            jobs.append((d, files, sum(size(f) for f in files)))
    keep = jobs[-policy.keep_done_data:] if policy.keep_done_data else list(jobs)
    out = [GcItem("job data", str(d), n, f"older than the newest {policy.keep_done_data} done jobs",
                  [f.name for f in files]) for d, files, n in jobs if (d, files, n) not in keep]
    for d, files, n in _oldest_first_over(keep, lambda j: j[2], policy.max_done_data_gb):
        out.append(GcItem("job data", str(d), n, f"over max_done_data_gb = {policy.max_done_data_gb:g}",
                          [f.name for f in files]))
    return out


def gc(layout: Layout, policy: RetentionConfig | None = None, dry_run: bool = True,
       *, lock_timeout: float = 10.0) -> GcPlan:
    """Apply the retention policy. dry_run: only say what would go (no lock, no change)."""
    policy = policy or RetentionConfig()
    if dry_run:
        return plan_gc(layout, policy)
    with models_lock(layout, "gc", lock_timeout):
        plan = plan_gc(layout, policy)
        plan.dry_run = False
        for item in plan.delete:
            try:
                _delete(item)
            except OSError as e:
                plan.errors.append(f"{item.path}: {e}")
    for item in plan.delete:
        log.info("gc: removed %s %s (%s, %d bytes)", item.what, item.path, item.why, item.bytes)
    return plan


def _delete(item: GcItem) -> None:
    path = Path(item.path)
    if item.what == "job data":
        # Say why the data is gone before it goes (a requeue then explains itself).
        atomic.write_json(path / DATA_REMOVED, {"at": time.time(), "files": item.files,
                                                "reason": f"retention: {item.why}"})
        for f in item.files:
            p = path / f
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        return
    if not path.name.startswith(TRASH):
        # One rename makes it disappear from every listing; the slow delete comes after.
        trash = path.with_name(f"{TRASH}{path.name}-{os.getpid()}-{time.time_ns()}")
        os.rename(path, trash)
        atomic.fsync_dir(path.parent)
        path = trash
    shutil.rmtree(path)

