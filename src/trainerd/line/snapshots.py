"""Snapshots: verified daily copies of the current version in snapshots/YYYY-MM-DD/,
each recording what it is a copy of and the models/ version it needs to load."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
from typing import Any

from trainerd import atomic
from trainerd.line.errors import LineError
from trainerd.line.lock import models_lock
from trainerd.line.versions import base_version, current_name, problems, read_manifest, size
from trainerd.paths import Layout

log = logging.getLogger("trainerd.line.snapshots")


def list_snapshots(layout: Layout) -> list[dict[str, Any]]:
    """snapshots/YYYY-MM-DD/ oldest first, with what each copies and needs (quick check)."""
    out = []
    root = layout.snapshots
    for name in sorted(os.listdir(root)) if root.is_dir() else []:
        if not is_day(name):
            continue
        try:
            man = atomic.verify_manifest(root / name, check_hashes=False)
            problem = None
        except atomic.ManifestError as e:
            man, problem = read_manifest(root / name) or {}, str(e)
        out.append({"name": name, "path": str(root / name), "snapshot_of": man.get("snapshot_of"),
                    "kind": man.get("kind"), "needs": man.get("needs"), "base": man.get("base"),
                    "bytes": size(root / name), "problem": problem})
    return out


def is_day(name: str) -> bool:
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
    if not is_day(day):
        raise LineError(f"{day!r} is not a date YYYY-MM-DD")
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
            raise LineError(f"not snapshotting {cur}: {'; '.join(found)}")
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
            raise LineError(f"snapshot of {cur} does not match its source; nothing kept")
        atomic.rename(tmp, dest)
        atomic.verify_manifest(dest, check_hashes=False)
    log.info("snapshot %s: copy of %s%s", day, cur, f" (needs {needs})" if needs else "")
    return {"status": "created", "path": str(dest), "snapshot_of": cur, "needs": needs,
            "bytes": size(dest)}

