"""Retention: what gc deletes, what it never deletes, and the CLI around it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import chat_rows, cli, write_jsonl
from tests.line.conftest import fake_version, line, truncate
from trainerd import atomic
from trainerd.config import RetentionConfig
from trainerd.line.refs import set_current
from trainerd.line.retention import gc
from trainerd.line.rollback import rollback
from trainerd.line.snapshots import snapshot
from trainerd.line.versions import current_name, list_versions, problems


def test_gc_dry_run_never_lists_current_its_chain_or_a_snapshots_needs(layout):
    line(layout)
    snapshot(layout, "2026-11-01")  # of v0005: needs v0003
    fake_version(layout, "v0006", kind="full", parent="v0005", nbytes=5000)  # a later consolidation
    fake_version(layout, "v0007", parent="v0006", base=str(layout.models / "v0006"))
    fake_version(layout, "v0008", parent="v0007", base=str(layout.models / "v0006"))
    rollback(layout, "v0007")  # v0008 is newer than current
    (layout.models / "rejected-v0009-of-v0007-20261101T000000").mkdir()
    (layout.models / ".tmp-v0009-somejob").mkdir()  # a publish that died
    policy = RetentionConfig(keep_versions=1, keep_snapshots=5, keep_rejected=0)

    plan = gc(layout, policy, dry_run=True)
    gone = {Path(i.path).name for i in plan.delete}
    assert gone == {"v0001", "v0002", "v0004", "v0005", "rejected-v0009-of-v0007-20261101T000000",
                    ".tmp-v0009-somejob"}
    assert plan.protected == {
        "v0007": "current", "v0006": "parent chain of current (v0007)",
        "v0008": "newest number (version names are never reused)",
        "v0003": "needed by snapshot 2026-11-01",
    }
    assert sorted(os.listdir(layout.models)) == sorted(
        ["current", "v0001", "v0002", "v0003", "v0004", "v0005", "v0006", "v0007", "v0008",
         "rejected-v0009-of-v0007-20261101T000000", ".tmp-v0009-somejob"])  # a dry run changes nothing

    done = gc(layout, policy, dry_run=False)
    assert {Path(i.path).name for i in done.delete} == gone and not done.errors
    assert [v.name for v in list_versions(layout)] == ["v0003", "v0006", "v0007", "v0008"]
    for name in ("v0003", "v0006", "v0007", "v0008"):
        assert problems(layout, name) == []
    assert not [p for p in os.listdir(layout.models) if p.startswith((".", "rejected-"))]


def test_gc_byte_limit_never_strands_an_adapter_without_its_base(layout):
    from trainerd.guards import dir_bytes

    fake_version(layout, "v0001", kind="full", nbytes=5000)
    fake_version(layout, "v0002", parent="v0001", base=str(layout.models / "v0001"))
    fake_version(layout, "v0003")
    fake_version(layout, "v0004", parent="v0003")
    set_current(layout, "v0004")
    total = dir_bytes(layout.models)
    # Just over the limit by less than one adapter: the oldest (v0001) must not go first,
    # because v0002 loads on it; v0002 goes, and then the total fits.
    limit = total - dir_bytes(layout.models / "v0002") + 10
    plan = gc(layout, RetentionConfig(keep_versions=0, max_models_gb=limit / 1024**3))
    assert [Path(i.path).name for i in plan.delete] == ["v0002"]
    assert plan.protected == {"v0004": "current", "v0003": "parent chain of current (v0004)"}
    # Tighter: both go, adapter first; current and its chain never, even over the limit.
    plan = gc(layout, RetentionConfig(keep_versions=0, max_models_gb=1 / 1024**3))
    assert [Path(i.path).name for i in plan.delete] == ["v0001", "v0002"]
    assert plan.notes and "protected" in plan.notes[0]


def test_gc_prunes_old_snapshots_and_done_data_but_keeps_job_records(layout):
    fake_version(layout, "v0001")
    set_current(layout, "v0001")
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        (layout.snapshots / day).mkdir()
        (layout.snapshots / day / "w").write_bytes(b"x" * 10)
        atomic.write_manifest(layout.snapshots / day, {"snapshot_of": "v0001", "needs": None})
    for i in range(3):
        d = layout.done / f"2026112{i}T000000-00000{i}-f"
        d.mkdir(parents=True)
        write_jsonl(d / "data.jsonl", chat_rows(4))
        (d / "job.json").write_text("{}")
    plan = gc(layout, RetentionConfig(keep_snapshots=1, keep_done_data=1), dry_run=False)
    assert sorted(os.listdir(layout.snapshots)) == ["2026-11-03"]
    jobs = sorted(os.listdir(layout.done))
    for d in jobs[:2]:
        assert sorted(os.listdir(layout.done / d)) == ["data-removed.json", "job.json"]
        assert "keep_done_data" not in json.dumps(plan.protected)
    assert (layout.done / jobs[2] / "data.jsonl").exists()
    note = atomic.read_json(layout.done / jobs[0] / "data-removed.json")
    assert note["files"] == ["data.jsonl"] and "retention" in note["reason"]


def test_cli_models_and_gc(layout):
    line(layout)
    (layout.config).write_text('base_model = "unused"\n[retention]\nkeep_versions = 1\n')
    b = str(layout.base)
    listing = json.loads(cli("models", "list", "--json", "-b", b).stdout)
    assert [v["name"] for v in listing] == ["v0001", "v0002", "v0003", "v0004", "v0005"]
    assert json.loads(cli("models", "show", "-b", b, "--json").stdout)["name"] == "v0005"
    assert "current: v0005 -> v0002" in cli("models", "rollback", "v0002", "-b", b).stdout
    truncate(layout.models / "v0004" / "adapter_model.safetensors")
    r = cli("models", "show", "v0004", "-b", b, check=False)
    assert r.returncode == 1 and "DAMAGED" in r.stdout
    r = cli("models", "rollback", "v0004", "-b", b, check=False)
    assert r.returncode == 1 and "refusing" in r.stderr and current_name(layout) == "v0002"
    dry = cli("gc", "--dry-run", "-b", b).stdout
    assert "would delete version" in dry and "kept v0002: current" in dry
    assert len(os.listdir(layout.models)) == 6  # nothing deleted by a dry run
    cli("gc", "-b", b)
    assert [v.name for v in list_versions(layout)] == ["v0001", "v0002", "v0003", "v0005"]
