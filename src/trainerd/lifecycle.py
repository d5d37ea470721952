"""The model line after publishing: list, show, rollback, snapshot, retention, export, replay.

Torch-free (the CLI and the supervisor import it). Weights are only ever copied, renamed
or deleted here, never loaded; merging lives in trainerd.worker.consolidate.

- A version is models/vNNNN/ with a manifest (sizes + sha256, written last). An adapter
  version loads on its `base`: the configured base_model, or a full version made by a
  consolidation (then that version must outlive the adapter).
- `current` is a symlink swapped atomically (trainerd.worker.models.set_current); rollback
  is nothing more than that swap, to a version whose manifest verifies. Nothing is deleted.
- Snapshots are verified copies in snapshots/YYYY-MM-DD/ that record what they need.
- Retention (gc) never deletes current, its parent chain back to the last full version,
  the newest version number, or a version a kept snapshot or kept adapter loads on.
Changes to models/ (rollback, snapshot, gc, consolidation) hold run/models.lock, so they
never interleave; publishing by a training worker only adds a version.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.config import DataMapConfig
from trainerd.formats import NO_MAP, FileKindError, iter_records, parse, to_json
from trainerd.guards import dir_bytes
from trainerd.jobs import DATA, TOKEN_CACHE, WORKER_LOCK, JobState
from trainerd.lock import flock_within
from trainerd.paths import Layout
from trainerd.schedule import Line, RetentionConfig, section
from trainerd.worker import models  # torch-free at import: versions(), set_current()

log = logging.getLogger("trainerd.lifecycle")

MODELS_LOCK = "models.lock"
TOKENS_CACHE = TOKEN_CACHE  # the tokenized cache of data.jsonl (worker/data.py)
TOKENS_REPLAY = "tokens-replay"  # ... and of replay.jsonl
REPLAY_JSONL = "replay.jsonl"  # old examples mixed into a job (see replay_for_job)
REPLAY_JSON = "replay.json"
DATA_REMOVED = "data-removed.json"
REJECTED = "rejected-"  # a consolidation that failed verification: never a version
TRASH = ".trash-"  # a folder being deleted: renamed first, so it vanishes at once
GB = 1024**3


class LifecycleError(Exception):
    """An operation that cannot be done as asked, with the reason and what to do."""


class Busy(LifecycleError):
    """Another rollback, snapshot, gc or consolidation holds run/models.lock."""


# ------------------------------------------------------------------ reading the line
def is_version(name: str) -> bool:
    return models._version_number(name) is not None


def current_name(layout: Layout) -> str | None:
    """The version `current` points to, or None while the line is still the base model."""
    try:
        return os.readlink(layout.current_model)
    except (FileNotFoundError, OSError):
        return None


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        m = atomic.read_json(path / atomic.MANIFEST)
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


def _size(path: Path) -> int:
    try:
        return dir_bytes(path) if path.is_dir() and not path.is_symlink() else os.lstat(path).st_size
    except OSError:
        return 0


def base_version(layout: Layout, base: str | None) -> str | None:
    """The models/ version an adapter loads on, or None when it is the configured base.
    Matched by folder name too, so a base dir that was moved still resolves."""
    if not base:
        return None
    p = Path(base)
    if not (p.parent.name == "models" and is_version(p.name)):
        return None
    if p.parent == layout.models or (layout.models / p.name).is_dir():
        return p.name
    return None


def resolve_base(layout: Layout, manifest: dict[str, Any]) -> str | None:
    """Where an adapter's full weights are now (a version folder, or the base_model)."""
    bv = base_version(layout, manifest.get("base"))
    return str(layout.models / bv) if bv else manifest.get("base")


def chain(layout: Layout, name: str) -> list[str]:
    """`name`, its parent, ... back to (and including) the nearest full version, or to the
    configured base. These are what rolling back step by step can reach."""
    out: list[str] = []
    while name and is_version(name) and name not in out:
        out.append(name)
        man = _manifest(layout.models / name)
        if man is None or man.get("kind") == "full":
            break
        name = man.get("parent") or ""
    return out


def line_state(layout: Layout) -> Line:
    """For the scheduler: the current version, its kind, and how many adapter versions
    (jobs) it holds on top of its full base."""
    cur = current_name(layout)
    if cur is None:
        return Line(None, "base", 0)
    man = _manifest(layout.models / cur) or {}
    n = sum(1 for v in chain(layout, cur) if (_manifest(layout.models / v) or {}).get("kind") == "adapter")
    return Line(cur, str(man.get("kind", "?")), n)


@dataclass
class Version:
    name: str
    kind: str | None
    parent: str | None
    base: str | None  # where its full weights are (adapters), as loaded now
    needs: str | None  # the models/ version it loads on, if any
    created_at: float | None
    jobs: list[dict[str, Any]]
    bytes: int
    current: bool
    problem: str | None = None  # why it cannot be loaded, or None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version(layout: Layout, name: str, cur: str | None, check_hashes: bool) -> Version:
    path = layout.models / name
    problem = None
    try:
        man = atomic.verify_manifest(path, check_hashes=check_hashes)
    except atomic.ManifestError as e:
        problem, man = str(e), _manifest(path) or {}
    skip = {"files", "version", "kind", "parent", "base", "created_at", "jobs"}
    return Version(
        name=name, kind=man.get("kind"), parent=man.get("parent"),
        base=resolve_base(layout, man) if man.get("kind") == "adapter" else None,
        needs=base_version(layout, man.get("base")) if man.get("kind") == "adapter" else None,
        created_at=man.get("created_at"), jobs=list(man.get("jobs") or []), bytes=_size(path),
        current=name == cur, problem=problem, extra={k: v for k, v in man.items() if k not in skip},
    )


def list_versions(layout: Layout, limit: int | None = None) -> list[Version]:
    """Versions oldest first (the newest `limit`, and the current one however old);
    `problem` from a quick check (file sizes, not hashes). Only the versions shown are read."""
    cur = current_name(layout)
    names = models.versions(layout)
    if limit is not None and len(names) > limit:
        names = [n for n in names[:-limit] if n == cur] + names[-limit:]
    return [_version(layout, n, cur, check_hashes=False) for n in names]


def _name(layout: Layout, name: str) -> str:
    if name == "current":
        cur = current_name(layout)
        if cur is None:
            raise LifecycleError("no version is current yet (the line is still the base model)")
        return cur
    if not is_version(name):
        raise LifecycleError(f"{name!r} is not a version name (vNNNN); `trainerd models list` shows them")
    if not (layout.models / name).is_dir():
        raise LifecycleError(f"{name}: no such version in {layout.models}")
    return name


def problems(layout: Layout, name: str, base_hashes: bool = True) -> list[str]:
    """Why `name` cannot be loaded: its files against its manifest (sha256 included), and
    for an adapter, the weights it loads on (base_hashes=False: their sizes only, for a
    daily check that should not re-read a whole base model). Empty when it is sound."""
    path = layout.models / name
    try:
        man = atomic.verify_manifest(path, check_hashes=True)
    except atomic.ManifestError as e:
        return [str(e)]
    if man.get("kind") == "full":
        return []
    if man.get("kind") != "adapter":
        return [f"{name}: manifest kind is {man.get('kind')!r}, expected 'adapter' or 'full'"]
    bv = base_version(layout, man.get("base"))
    if bv is not None:
        try:
            atomic.verify_manifest(layout.models / bv, check_hashes=base_hashes)
        except atomic.ManifestError as e:
            return [f"{name} loads on {bv}, which is not sound: {e}"]
    elif os.path.isabs(str(man.get("base"))) and not Path(man["base"]).exists():
        return [f"{name} loads on {man['base']}, which does not exist"]
    return []


def show(layout: Layout, name: str) -> dict[str, Any]:
    """Everything about one version, verified against its manifest (every sha256)."""
    name = _name(layout, name)
    v = _version(layout, name, current_name(layout), check_hashes=True)
    found = problems(layout, name)
    snaps = [s["name"] for s in list_snapshots(layout) if name in (s.get("snapshot_of"), s.get("needs"))]
    from trainerd import forgetting, gate

    m = forgetting.matrix(layout)
    row = next((r for r in m["versions"] if r["version"] == name), None)
    return {**v.to_dict(), "ok": not found, "problems": found, "chain": chain(layout, name),
            "snapshots": snaps, "path": str(layout.models / name),
            "gate_state": gate.state(layout, name, v.extra), "recall": row,
            "matrix": m}


# ------------------------------------------------------------------ locking
@contextlib.contextmanager
def models_lock(layout: Layout, what: str, timeout: float = 10.0) -> Iterator[None]:
    """Serialise changes to models/ and snapshots/ between processes (kernel flock; the
    holder's pid and task are written inside for the error message)."""
    path = layout.run / MODELS_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = flock_within(path, timeout, interval=0.1)
    if fd is None:
        with contextlib.suppress(OSError):
            holder = path.read_text("utf-8", "replace").strip()
        raise Busy(f"models are busy ({holder or 'another process'}); try again when it has finished")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what}, pid {os.getpid()}, since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def training_job(layout: Layout) -> str | None:
    """The active job whose worker is training right now (its job lock is held)."""
    if not layout.active.is_dir():
        return None
    for d in sorted(layout.active.iterdir()):
        try:
            fd = os.open(d / WORKER_LOCK, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe; released at once
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            return d.name
        finally:
            os.close(fd)
    return None


# ------------------------------------------------------------------ rollback
def rollback(layout: Layout, name: str, *, lock_timeout: float = 10.0, force: bool = False) -> dict[str, Any]:
    """Point `current` at `name` (or "base"), atomically; every version is kept. The next
    job trains from it. Refused for a version (or its base) that does not verify, and
    while a worker is training (it would publish on top of the old current). A version the
    eval gate held becomes current as a recorded override; if its parent is no longer
    current that would drop later training, so it needs force."""
    from trainerd import gate

    job = training_job(layout)
    if job is not None:
        raise LifecycleError(
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
            name = _name(layout, name)
            found = problems(layout, name)
            if found:
                raise LifecycleError(f"refusing to make {name} current: {'; '.join(found)}")
            man = _manifest(layout.models / name) or {}
            override = gate.is_held(man)
            if override:
                why = gate.override_problem(man, name, before, force)
                if why:
                    raise LifecycleError(why)
                gate.record_override(layout, name, before, force)
            models.set_current(layout, name)
            if override:
                log.warning("rollback: %s was held by the eval gate; made current as an override", name)
                return {"from": before or "base", "to": name, "override": True, "force": force,
                        "verdict": (gate.of_manifest(man) or {}).get("verdict")}
    log.info("rollback: current %s -> %s", before or "base", name)
    return {"from": before or "base", "to": name}


# ------------------------------------------------------------------ snapshots
def list_snapshots(layout: Layout) -> list[dict[str, Any]]:
    """snapshots/YYYY-MM-DD/ oldest first, with what each copies and needs (quick check)."""
    out = []
    root = layout.snapshots
    for name in sorted(os.listdir(root)) if root.is_dir() else []:
        if not _is_day(name):
            continue
        try:
            man = atomic.verify_manifest(root / name, check_hashes=False)
            problem = None
        except atomic.ManifestError as e:
            man, problem = _manifest(root / name) or {}, str(e)
        out.append({"name": name, "path": str(root / name), "snapshot_of": man.get("snapshot_of"),
                    "kind": man.get("kind"), "needs": man.get("needs"), "base": man.get("base"),
                    "bytes": _size(root / name), "problem": problem})
    return out


def _is_day(name: str) -> bool:
    try:
        return dt.date.fromisoformat(name).isoformat() == name
    except ValueError:
        return False


def snapshot(layout: Layout, day: str | None = None, *, lock_timeout: float = 10.0) -> dict[str, Any]:
    """Copy the current version to snapshots/<day>/, verified; once per day.

    Built under a temp name, hashed (its manifest: the version's own fields + what it is a
    snapshot of + `needs`, the models/ version an adapter loads on), checked file by file
    against the source's sha256, then renamed into place. Skipped when the newest snapshot
    already holds the current version unchanged."""
    day = day or dt.date.today().isoformat()
    if not _is_day(day):
        raise LifecycleError(f"{day!r} is not a date YYYY-MM-DD")
    with models_lock(layout, f"snapshot {day}", lock_timeout):
        cur = current_name(layout)
        if cur is None:
            return {"status": "nothing", "reason": "no model version yet"}
        layout.snapshots.mkdir(parents=True, exist_ok=True)
        dest = layout.snapshots / day
        if dest.exists():
            try:
                man = atomic.verify_manifest(dest, check_hashes=False)
                return {"status": "exists", "path": str(dest), "snapshot_of": man.get("snapshot_of")}
            except atomic.ManifestError as e:
                aside = layout.snapshots / f"corrupt-{day}-{int(time.time())}"
                log.error("snapshot %s is damaged (%s); set aside as %s", day, e, aside.name)
                atomic.rename(dest, aside)
        valid = [s for s in list_snapshots(layout) if s["problem"] is None]
        if valid and valid[-1]["snapshot_of"] == cur:
            return {"status": "unchanged", "same_as": valid[-1]["name"], "snapshot_of": cur}
        src = layout.models / cur
        found = problems(layout, cur, base_hashes=False)
        if found:
            raise LifecycleError(f"not snapshotting {cur}: {'; '.join(found)}")
        src_man = atomic.read_json(src / atomic.MANIFEST)
        tmp = layout.snapshots / f"{atomic.TMP_PREFIX}{day}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, symlinks=True)
        atomic.make_readable(tmp)
        meta = {k: v for k, v in src_man.items() if k != "files"}
        needs = base_version(layout, src_man.get("base")) if src_man.get("kind") == "adapter" else None
        man = atomic.write_manifest(tmp, {**meta, "snapshot_of": cur, "snapshot_date": day,
                                          "needs": needs, "snapshot_at": time.time()})
        # The copy is the source, byte for byte (hashes just read back from the new files).
        want = {k: v["sha256"] for k, v in src_man["files"].items()}
        got = {k: v["sha256"] for k, v in man["files"].items()}
        if want != got:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LifecycleError(f"snapshot of {cur} does not match its source; nothing kept")
        atomic.rename(tmp, dest)
        atomic.verify_manifest(dest, check_hashes=False)
    log.info("snapshot %s: copy of %s%s", day, cur, f" (needs {needs})" if needs else "")
    return {"status": "created", "path": str(dest), "snapshot_of": cur, "needs": needs,
            "bytes": _size(dest)}


# ------------------------------------------------------------------ retention
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

    names = models.versions(layout)
    mans = {n: _manifest(layout.models / n) or {} for n in names}
    sizes = {n: _size(layout.models / n) for n in names}

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
            delete.append(GcItem("rejected", str(p), _size(p), f"beyond keep_rejected = {policy.keep_rejected}"))
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
            out.append(GcItem("leftover", str(p), _size(p), "unfinished or damaged snapshot"))
    training = training_job(layout) is not None
    for p in sorted(layout.models.iterdir()) if layout.models.is_dir() else []:
        if p.name.startswith(TRASH) or (p.name.startswith(atomic.TMP_PREFIX) and not training):
            out.append(GcItem("leftover", str(p), _size(p), "unfinished publish or deletion"))
    return out


def _done_data(layout: Layout, policy: RetentionConfig) -> list[GcItem]:
    """Data files of finished jobs beyond the limits; job.json and the loss curve stay."""
    if not layout.done.is_dir():
        return []
    from trainerd.history import finished

    jobs = []
    # Oldest finish first: "the newest N done jobs" are the N that finished last, not the
    # N that arrived last (a requeued job finishes long after it arrived).
    for d in [r.path for r in reversed(finished(layout, (JobState.DONE,)).refs)]:
        files = [d / f for f in (DATA, REPLAY_JSONL, REPLAY_JSON, TOKENS_CACHE, TOKENS_REPLAY) if os.path.lexists(d / f)]
        if files:
            jobs.append((d, files, sum(_size(f) for f in files)))
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


# ------------------------------------------------------------------ export
def export(layout: Layout, name: str, dest: Path, merged: bool = False) -> dict[str, Any]:
    """Copy a version out for use elsewhere, loadable with plain transformers/peft.

    An adapter is exported with its tokenizer and the absolute path of its base written
    into adapter_config.json, so `PeftModel.from_pretrained(base, DIR)` works as is;
    `merged` writes full weights instead (needs the training stack; done by the worker
    package). A full version is copied as it is."""
    name = _name(layout, name)
    found = problems(layout, name)
    if found:
        raise LifecycleError(f"not exporting {name}: {'; '.join(found)}")
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise LifecycleError(f"{dest} already exists and is not an empty folder")
    man = atomic.read_json(layout.models / name / atomic.MANIFEST)
    if merged and man.get("kind") == "adapter":
        from trainerd.worker.consolidate import export_merged  # torch: only when asked for

        return export_merged(layout, name, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{atomic.TMP_PREFIX}export-{dest.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(layout.models / name, tmp)
    os.unlink(tmp / atomic.MANIFEST)
    base = resolve_base(layout, man) if man.get("kind") == "adapter" else None
    if base is not None:
        cfg_path = tmp / "adapter_config.json"
        acfg = atomic.read_json(cfg_path)
        acfg["base_model_name_or_path"] = base
        atomic.write_json(cfg_path, acfg)
    atomic.make_readable(tmp)  # copytree kept the 0600 of the weights; a server must read them
    atomic.write_manifest(tmp, {"exported_from": name, "kind": man.get("kind"), "base": base,
                                "parent": man.get("parent"), "jobs": man.get("jobs", []),
                                "exported_at": time.time()})
    if dest.exists():
        dest.rmdir()
    atomic.rename(tmp, dest)
    return {"path": str(dest), "version": name, "kind": man.get("kind"), "base": base}


# ------------------------------------------------------------------ replay
def _seed(job_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"replay:{job_id}".encode()).digest()[:8], "big")


def _nonblank_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(record number, raw JSON) of each example-looking record: lines, or elements of a
    JSON array file. A file that is neither yields nothing (intake refused such files)."""
    with open(path, "rb") as f:
        try:
            for rec in iter_records(f):
                if rec.raw is not None and rec.raw.strip():
                    yield rec.number, rec.raw
        except FileKindError:
            return


def replay_pool(layout: Layout, exclude: str | None = None) -> list[Path]:
    """Done jobs' data files, in arrival order (their ids sort by arrival); not those of
    jobs the eval gate held (their training is not in the line)."""
    from trainerd.gate import held_jobs

    if not layout.done.is_dir():
        return []
    out = []
    held = held_jobs(layout)
    for d in sorted(layout.done.iterdir()):
        p = d / DATA
        if d.name != exclude and d.name not in held and p.is_file() and not p.is_symlink():
            out.append(p)
    return out


def sample_examples(layout: Layout, k: int, seed: int, exclude: str | None = None,
                    data_map: DataMapConfig = NO_MAP) -> tuple[list[bytes], dict[str, list[int]], int]:
    """k examples drawn uniformly, without replacement, from every done job's data, by a
    seeded generator: (JSON lines in a standard format, {job id: record numbers}, pool
    size). Two streaming passes, so memory holds only the k picked examples."""
    pool = replay_pool(layout, exclude)
    counts = [sum(1 for _ in _nonblank_lines(p)) for p in pool]
    total = sum(counts)
    picks = set(random.Random(seed).sample(range(total), min(k, total)))
    rows: list[bytes] = []
    sources: dict[str, list[int]] = {}
    i = 0
    for p, count in zip(pool, counts, strict=True):
        if not any(i <= j < i + count for j in picks):  # nothing picked here: skip the file
            i += count
            continue
        for n, raw in _nonblank_lines(p):
            if i in picks:
                try:  # intake validated it; a file edited since is not trusted blindly
                    ex = parse(json.loads(raw), data_map)
                except ValueError:  # FormatError included
                    ex = None
                if ex is not None:  # one line each, whatever layout the job's file had
                    rows.append(json.dumps(to_json(ex), ensure_ascii=False).encode())
                    sources.setdefault(p.parent.name, []).append(n)
            i += 1
    return rows, sources, total


def replay_for_job(layout: Layout, job_dir: Path, fraction: float, new_examples: int,
                   max_examples: int = 2000, data_map: DataMapConfig = NO_MAP) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Old examples to mix into this job's epoch against forgetting, and a record of them
    for the job's metadata (None when replay is off or there is nothing to replay).

    ceil(fraction x new examples) examples (at most max_examples) are drawn from the done
    jobs, seeded by the job id. The pick is written to the job dir (replay.jsonl, then
    replay.json with its sha256, last) at the first attempt and reused by every later
    attempt, so resuming skips exactly what was trained even if more jobs finished since."""
    job_dir = Path(job_dir)
    if fraction <= 0 or max_examples <= 0:
        return [], None
    try:
        record = atomic.read_json(job_dir / REPLAY_JSON)
        data = (job_dir / REPLAY_JSONL).read_bytes()
        if hashlib.sha256(data).hexdigest() == record["sha256"]:
            return [json.loads(x) for x in data.splitlines() if x.strip()], _summary(record)
        log.warning("%s does not match its record; drawing the replay sample again", REPLAY_JSONL)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    k = min(max_examples, math.ceil(fraction * new_examples))
    seed = _seed(job_dir.name)
    rows, sources, total = sample_examples(layout, k, seed, exclude=job_dir.name, data_map=data_map)
    if not rows:
        return [], None
    data = b"".join(r + b"\n" for r in rows)
    atomic.write_bytes(job_dir / REPLAY_JSONL, data)
    record = {"fraction": fraction, "seed": seed, "examples": len(rows), "pool_examples": total,
              "sources": sources, "sha256": hashlib.sha256(data).hexdigest(), "created_at": time.time()}
    atomic.write_json(job_dir / REPLAY_JSON, record)
    return [json.loads(r) for r in rows], _summary(record)


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """The record without per-line detail (which stays in the job's replay.json)."""
    return {**{k: v for k, v in record.items() if k != "sources"},
            "sources": {job: len(lines) for job, lines in record.get("sources", {}).items()}}


# ------------------------------------------------------------------ the daily task process
def daily(layout: Layout, day: str, policy: RetentionConfig) -> int:
    """Snapshot, then retention. Both are attempted; exit 1 if either failed."""
    rc = 0
    try:
        res = snapshot(layout, day, lock_timeout=600)
        log.info("snapshot %s: %s", day, json.dumps(res, default=str))
    except Exception as e:  # e.g. a damaged current version: gc still runs
        log.error("snapshot %s failed: %s", day, e)
        rc = 1
    try:
        plan = gc(layout, policy, dry_run=False, lock_timeout=600)
        log.info("gc: %d item(s), %d bytes freed%s", len(plan.delete), plan.freed,
                 "; errors: " + "; ".join(plan.errors) if plan.errors else "")
        rc = rc or (1 if plan.errors else 0)
    except Exception as e:
        log.error("gc failed: %s", e)
        rc = 1
    return rc


def main(argv: list[str] | None = None) -> int:
    """`python -m trainerd.lifecycle daily --base-dir BASE [--date YYYY-MM-DD]`"""
    ap = argparse.ArgumentParser(prog="python -m trainerd.lifecycle")
    ap.add_argument("task", choices=["daily"])
    ap.add_argument("--base-dir", type=Path, required=True)
    ap.add_argument("--date", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from trainerd.config import load_config

    layout = Layout.at(args.base_dir)
    policy = section(load_config(layout.config), "retention")
    return daily(layout, args.date or dt.date.today().isoformat(), policy)


if __name__ == "__main__":
    raise SystemExit(main())
