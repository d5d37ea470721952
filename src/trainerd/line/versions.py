"""Reading the line: version names, manifests, the chain an adapter loads on, listings,
and whether a version can be loaded. Only reads files; nothing here changes models/."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.guards import dir_bytes
from trainerd.line.errors import LineError
from trainerd.paths import Layout

REJECTED = "rejected-"  # a consolidation that failed verification: never a version


def version_number(name: str) -> int | None:
    """v0012 -> 12. Four digits at least, as many as it takes after v9999 (v10000)."""
    if len(name) >= 5 and name[0] == "v" and name[1:].isdigit():
        return int(name[1:])
    return None


def is_version(name: str) -> bool:
    return version_number(name) is not None


def versions(layout: Layout) -> list[str]:
    """Version names in numeric order (v0010 after v0009, never by string accident)."""
    names = [n for n in os.listdir(layout.models) if version_number(n) is not None] \
        if layout.models.is_dir() else []
    return sorted(names, key=lambda n: version_number(n) or 0)


def next_name(layout: Layout) -> str:
    """The name the next version gets: one above the newest (names are never reused)."""
    existing = versions(layout)
    return f"v{(version_number(existing[-1]) or 0) + 1 if existing else 1:04d}"


def current_name(layout: Layout) -> str | None:
    """The version `current` points to, or None while the line is still the base model."""
    try:
        return os.readlink(layout.current_model)
    except (FileNotFoundError, OSError):
        return None


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A folder's manifest as it is (unverified), or None when there is none or it is unreadable."""
    try:
        m = atomic.read_json(path / atomic.MANIFEST)
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


def size(path: Path) -> int:
    """Bytes on disk of a folder (or file); 0 when it is gone."""
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
        man = read_manifest(layout.models / name)
        if man is None or man.get("kind") == "full":
            break
        name = man.get("parent") or ""
    return out


@dataclass(frozen=True)
class Line:
    """What the model line looks like now, for the scheduler's consolidation policy."""

    version: str | None  # current version, None for the configured base
    kind: str  # "base", "adapter" or "full"
    jobs_since_full: int  # adapter versions between current and its full base


def line_state(layout: Layout) -> Line:
    """The current version, its kind, and how many adapter versions (jobs) it holds on top
    of its full base."""
    cur = current_name(layout)
    if cur is None:
        return Line(None, "base", 0)
    man = read_manifest(layout.models / cur) or {}
    n = sum(1 for v in chain(layout, cur) if (read_manifest(layout.models / v) or {}).get("kind") == "adapter")
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


def version_info(layout: Layout, name: str, cur: str | None, check_hashes: bool) -> Version:
    path = layout.models / name
    problem = None
    try:
        man = atomic.verify_manifest(path, check_hashes=check_hashes)
    except atomic.ManifestError as e:
        problem, man = str(e), read_manifest(path) or {}
    skip = {"files", "version", "kind", "parent", "base", "created_at", "jobs"}
    return Version(
        name=name, kind=man.get("kind"), parent=man.get("parent"),
        base=resolve_base(layout, man) if man.get("kind") == "adapter" else None,
        needs=base_version(layout, man.get("base")) if man.get("kind") == "adapter" else None,
        created_at=man.get("created_at"), jobs=list(man.get("jobs") or []), bytes=size(path),
        current=name == cur, problem=problem, extra={k: v for k, v in man.items() if k not in skip},
    )


def list_versions(layout: Layout, limit: int | None = None) -> list[Version]:
    """Versions oldest first (the newest `limit`, and the current one however old);
    `problem` from a quick check (file sizes, not hashes). Only the versions shown are read."""
    cur = current_name(layout)
    names = versions(layout)
    if limit is not None and len(names) > limit:
        names = [n for n in names[:-limit] if n == cur] + names[-limit:]
    return [version_info(layout, n, cur, check_hashes=False) for n in names]


def existing(layout: Layout, name: str) -> str:
    """The version `name` stands for (`current` resolved), checked to exist."""
    if name == "current":
        cur = current_name(layout)
        if cur is None:
            raise LineError("no version is current yet (the line is still the base model)")
        return cur
    if not is_version(name):
        raise LineError(f"{name!r} is not a version name (vNNNN); `trainerd models list` shows them")
    if not (layout.models / name).is_dir():
        raise LineError(f"{name}: no such version in {layout.models}")
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
