"""Which model a name stands for (`current`, `base`, vNNNN, a folder), and moving the
`current` pointer. models/current is a symlink swapped atomically, so a reader sees the
old model or the new one, never a mix. Reads files only: loading is trainerd.worker's."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainerd import atomic, gate
from trainerd.config import Config
from trainerd.jobs import JobMeta
from trainerd.line import forgetting
from trainerd.line.versions import resolve_base, version_number
from trainerd.paths import Layout


@dataclass
class ModelRef:
    version: str  # "base" or "vNNNN"
    kind: str  # "base", "adapter" or "full"
    base: str  # where the full weights live (local dir or hub id)
    path: Path | None = None  # the version dir (None for the configured base)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer_source(self) -> str:
        return str(self.path) if self.path is not None else self.base


class NoSuchModel(LookupError):
    """A version name, `current`, `base` or a path that names no loadable model (with what to do)."""


def current(layout: Layout, cfg: Config) -> ModelRef:
    link = layout.current_model
    if not os.path.lexists(link):
        return ModelRef("base", "base", cfg.base_model)
    name = os.readlink(link)
    path = layout.models / name
    manifest = atomic.verify_manifest(path, check_hashes=False)
    kind = manifest["kind"]
    base = str(path) if kind == "full" else manifest["base"]
    return ModelRef(name, kind, base, path, manifest)


def resolve(layout: Layout, cfg: Config, spec: str) -> ModelRef:
    """The model `spec` names: `current`, `base`, a version (v0003), or the path of a
    model folder (a version, snapshot or export with a manifest, or any HF folder: an
    adapter is loaded on the base its adapter_config names)."""
    if spec == "current":
        return current(layout, cfg)
    if spec == "base":
        return ModelRef("base", "base", cfg.base_model)
    if version_number(spec) is not None:
        path = layout.models / spec
        if not path.is_dir():
            raise NoSuchModel(f"no version {spec} in {layout.models}; `trainerd models list` shows them")
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise NoSuchModel(f"{spec!r} is not a version (vNNNN), 'current', 'base' or a model folder")
        path = path.resolve()
    try:
        man = atomic.verify_manifest(path, check_hashes=False)
    except atomic.ManifestError as e:
        if (path / atomic.MANIFEST).exists() or version_number(spec) is not None:
            raise NoSuchModel(f"{spec} cannot be loaded: {e}; `trainerd models show {spec}` says more") from None
        man = {}
    kind = man.get("kind")
    if kind is None:  # a plain HF folder
        kind = "adapter" if (path / "adapter_config.json").is_file() else "full"
    if kind == "full":
        return ModelRef(man.get("version") or path.name, "full", str(path), path, man)
    base = resolve_base(layout, man) if man.get("base") else None  # a moved base dir still resolves
    if base is None:
        try:
            base = atomic.read_json(path / "adapter_config.json")["base_model_name_or_path"]
        except (OSError, ValueError, KeyError):
            base = cfg.base_model
    return ModelRef(man.get("version") or path.name, "adapter", str(base), path, man)


def set_current(layout: Layout, name: str) -> None:
    """Point models/current at `name` in one rename (callers hold the models lock)."""
    tmp = layout.models / f".current-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(name, tmp)
    os.replace(tmp, layout.current_model)
    atomic.fsync_dir(layout.models)


def published_version(layout: Layout, cfg: Config, meta: JobMeta) -> str | None:
    """The current version if it already contains this job: a worker that published and
    then died before exiting must not train the same examples into the line twice."""
    ref = current(layout, cfg)
    since = max([h.get("at", 0.0) for h in meta.history if h.get("event") == "requeued"] or [0.0])
    for j in ref.manifest.get("jobs", []):
        if j.get("id") == meta.id and ref.manifest.get("created_at", 0) > since:
            return ref.version
    # ... or a version the eval gate held: published, just not current.
    found = forgetting.version_of_job(layout, meta.id)
    if found and gate.is_held(found[1]) and found[1].get("created_at", 0) > since:
        return found[0]
    return None
