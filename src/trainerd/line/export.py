"""`trainerd models export`: a version copied out for use elsewhere, loadable with plain
transformers/peft. Merging an adapter into full weights needs torch, so that part runs in
a worker child process (`python -m trainerd.worker.consolidate --export`); this module
checks, copies and asks."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from trainerd import atomic, children
from trainerd.line.errors import LineError
from trainerd.line.versions import existing, problems, resolve_base
from trainerd.paths import Layout


def check_export(layout: Layout, name: str, dest: Path) -> tuple[str, dict[str, Any], Path]:
    """(version, its manifest, the resolved destination), or LineError saying why not:
    the version does not verify, or `dest` holds something already."""
    name = existing(layout, name)
    found = problems(layout, name)
    if found:
        raise LineError(f"not exporting {name}: {'; '.join(found)}")
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise LineError(f"{dest} already exists and is not an empty folder")
    return name, atomic.read_json(layout.models / name / atomic.MANIFEST), dest


def export(layout: Layout, name: str, dest: Path, merged: bool = False) -> dict[str, Any]:
    """Copy a version to `dest`.

    An adapter is exported with its tokenizer and the absolute path of its base written
    into adapter_config.json, so `PeftModel.from_pretrained(base, DIR)` works as is;
    `merged` writes full weights instead, verified like a consolidation (in a worker child:
    it needs the training stack). A full version is copied as it is."""
    name, man, dest = check_export(layout, name, dest)
    if merged and man.get("kind") == "adapter":
        return _merged_in_worker(layout, name, dest)
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


def _merged_in_worker(layout: Layout, name: str, dest: Path) -> dict[str, Any]:
    """The merged export, done by `python -m trainerd.worker.consolidate --export NAME DEST`,
    which answers in trainerd.children's format (its log is its stderr, passed through):
    its own sentence when it refuses, as LineError."""
    cmd = [sys.executable, "-m", "trainerd.worker.consolidate", "--base-dir", str(layout.base),
           "--export", name, str(dest)]
    try:
        return children.run(cmd, f"the merged export of {name}")
    except children.ChildFailed as e:
        raise LineError(str(e)) from None
