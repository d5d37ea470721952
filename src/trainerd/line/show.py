"""Everything about one version, for `trainerd models show` and the web: its manifest
checked file by file, its chain, the snapshots that hold it, the gate and its recall."""

from __future__ import annotations

from typing import Any

from trainerd import gate
from trainerd.line import forgetting
from trainerd.line.snapshots import list_snapshots
from trainerd.line.versions import chain, current_name, existing, problems, version_info
from trainerd.paths import Layout


def show(layout: Layout, name: str) -> dict[str, Any]:
    """Everything about one version, verified against its manifest (every sha256)."""
    name = existing(layout, name)
    v = version_info(layout, name, current_name(layout), check_hashes=True)
    found = problems(layout, name)
    snaps = [s["name"] for s in list_snapshots(layout) if name in (s.get("snapshot_of"), s.get("needs"))]
    m = forgetting.matrix(layout)
    row = next((r for r in m["versions"] if r["version"] == name), None)
    return {**v.to_dict(), "ok": not found, "problems": found, "chain": chain(layout, name),
            "snapshots": snaps, "path": str(layout.models / name),
            "gate_state": gate.state(layout, name, v.extra), "recall": row,
            "matrix": m}

