"""Daily snapshots are verified copies that record the version they need."""

from __future__ import annotations

import os

import pytest

from tests.line.conftest import fake_version, line, truncate
from trainerd import atomic
from trainerd.line.errors import LineError
from trainerd.line.refs import set_current
from trainerd.line.rollback import rollback
from trainerd.line.snapshots import snapshot


def test_snapshot_is_a_verified_copy_that_records_its_base(layout):
    line(layout)
    res = snapshot(layout, "2026-11-20")
    assert res["status"] == "created" and res["needs"] == "v0003"
    snap = layout.snapshots / "2026-11-20"
    man = atomic.verify_manifest(snap)
    assert man["snapshot_of"] == "v0005" and man["needs"] == "v0003" and man["kind"] == "adapter"
    src = atomic.read_json(layout.models / "v0005" / "manifest.json")["files"]
    assert {k: v["sha256"] for k, v in man["files"].items()} == {k: v["sha256"] for k, v in src.items()}
    assert not [p for p in os.listdir(layout.snapshots) if p.startswith(".")]

    assert snapshot(layout, "2026-11-20")["status"] == "exists"  # once per day
    assert snapshot(layout, "2026-11-21")["status"] == "unchanged"  # same model
    rollback(layout, "v0003")
    assert snapshot(layout, "2026-11-21")["needs"] is None  # a full one needs nothing

    # A damaged snapshot of the day is set aside and made again.
    truncate(layout.snapshots / "2026-11-21" / "model.safetensors")
    set_current(layout, "v0004")
    assert snapshot(layout, "2026-11-21")["status"] == "created"
    assert [p for p in os.listdir(layout.snapshots) if p.startswith("corrupt-2026-11-21")]

    # A current version that does not verify is not snapshotted.
    fake_version(layout, "v0006", parent="v0004", base=str(layout.models / "v0003"))
    set_current(layout, "v0006")
    truncate(layout.models / "v0006" / "adapter_model.safetensors")
    with pytest.raises(LineError, match="not snapshotting v0006"):
        snapshot(layout, "2026-11-22")
    assert not (layout.snapshots / "2026-11-22").exists()
