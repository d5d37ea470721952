"""The daily housework process as the scheduler starts it: snapshot, then retention."""

from __future__ import annotations

import subprocess
import sys

from tests.line.conftest import line, truncate
from trainerd import atomic
from trainerd.line.versions import versions


def daily(layout, day: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainerd.line.daily", "--base-dir", str(layout.base),
                           "--date", day], capture_output=True, text=True, timeout=120)


def test_daily_snapshots_then_applies_the_configured_retention(layout):
    line(layout)  # current v0005, an adapter on v0003
    layout.config.write_text('base_model = "unused"\n[retention]\nkeep_versions = 1\n')
    r = daily(layout, "2026-11-20")
    assert r.returncode == 0, r.stderr
    assert atomic.verify_manifest(layout.snapshots / "2026-11-20")["snapshot_of"] == "v0005"
    assert versions(layout) == ["v0003", "v0004", "v0005"]  # current's chain back to the full one
    assert "gc: 2 item(s)" in r.stderr


def test_a_failed_snapshot_still_runs_retention_and_says_so_in_the_exit_status(layout):
    line(layout)
    layout.config.write_text('base_model = "unused"\n[retention]\nkeep_versions = 1\n')
    truncate(layout.models / "v0005" / "adapter_model.safetensors")
    r = daily(layout, "2026-11-21")
    assert r.returncode == 1 and "snapshot 2026-11-21 failed: not snapshotting v0005" in r.stderr
    assert not (layout.snapshots / "2026-11-21").exists()
    assert versions(layout) == ["v0003", "v0004", "v0005"]  # gc ran all the same
