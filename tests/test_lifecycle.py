"""Model lifecycle on real folders: versions, show, rollback, snapshots, retention, export,
replay. Most versions here are hand-made folders with real manifests (lifecycle never
loads weights); the slow test trains real jobs with the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd import atomic, lifecycle
from trainerd.paths import Layout
from trainerd.schedule import RetentionConfig
from trainerd.worker import models


@pytest.fixture
def layout(tmp_path) -> Layout:
    lay = Layout.at(tmp_path / "base")
    lay.ensure()
    (tmp_path / "hf-base").mkdir()  # stands in for the configured base_model folder
    return lay


def fake_version(layout: Layout, name: str, kind: str = "adapter", parent: str = "base",
                 base: str | None = None, nbytes: int = 1000) -> Path:
    """A version folder as publish writes it (weights, tokenizer, manifest last)."""
    d = layout.models / name
    d.mkdir(parents=True)
    weights = "adapter_model.safetensors" if kind == "adapter" else "model.safetensors"
    (d / weights).write_bytes(os.urandom(nbytes))
    (d / "tokenizer.json").write_text("{}")
    if kind == "adapter":
        (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "elsewhere"}))
        base = base or str(layout.base.parent / "hf-base")
    atomic.write_manifest(d, {"version": name, "parent": parent, "kind": kind,
                              "base": base if kind == "adapter" else None,
                              "jobs": [{"id": f"job-{name}", "name": f"{name}.jsonl"}],
                              "created_at": time.time()})
    return d


def line(layout: Layout) -> None:
    """v1 -> v2 (adapters on the base model) -> v3 (full, merged v2) -> v4 -> v5 (adapters on v3)."""
    fake_version(layout, "v0001")
    fake_version(layout, "v0002", parent="v0001")
    fake_version(layout, "v0003", kind="full", parent="v0002", nbytes=5000)
    fake_version(layout, "v0004", parent="v0003", base=str(layout.models / "v0003"))
    fake_version(layout, "v0005", parent="v0004", base=str(layout.models / "v0003"))
    models.set_current(layout, "v0005")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_list_show_chain_and_line_state(layout):
    line(layout)
    vs = lifecycle.list_versions(layout)
    assert [v.name for v in vs] == ["v0001", "v0002", "v0003", "v0004", "v0005"]
    assert [v.current for v in vs] == [False] * 4 + [True]
    assert vs[4].needs == "v0003" and vs[4].base == str(layout.models / "v0003")
    assert vs[0].needs is None and all(v.problem is None for v in vs)
    assert lifecycle.chain(layout, "v0005") == ["v0005", "v0004", "v0003"]  # stops at the full one
    assert lifecycle.chain(layout, "v0002") == ["v0002", "v0001"]
    st = lifecycle.line_state(layout)
    assert (st.version, st.kind, st.jobs_since_full) == ("v0005", "adapter", 2)
    info = lifecycle.show(layout, "current")
    assert info["name"] == "v0005" and info["ok"] and info["chain"] == ["v0005", "v0004", "v0003"]


def test_corrupt_version_is_detected_and_never_made_current(layout):
    line(layout)
    models.set_current(layout, "v0002")
    truncate(layout.models / "v0004" / "adapter_model.safetensors")
    info = lifecycle.show(layout, "v0004")
    assert not info["ok"] and "adapter_model.safetensors" in info["problems"][0]
    assert "bytes" in info["problems"][0]  # size mismatch, caught without hashing
    assert next(v for v in lifecycle.list_versions(layout) if v.name == "v0004").problem
    with pytest.raises(lifecycle.LifecycleError, match="refusing to make v0004 current"):
        lifecycle.rollback(layout, "v0004")
    assert os.readlink(layout.current_model) == "v0002"

    # Same size, different bytes: only the sha256 tells; show and rollback hash everything.
    p = layout.models / "v0001" / "adapter_model.safetensors"
    data = bytearray(p.read_bytes())
    data[10] ^= 0xFF
    p.write_bytes(bytes(data))
    assert "sha256" in lifecycle.show(layout, "v0001")["problems"][0]
    with pytest.raises(lifecycle.LifecycleError, match="sha256"):
        lifecycle.rollback(layout, "v0001")

    # An adapter whose full base is damaged cannot be loaded either.
    truncate(layout.models / "v0003" / "model.safetensors")
    with pytest.raises(lifecycle.LifecycleError, match="loads on v0003"):
        lifecycle.rollback(layout, "v0005")
    assert os.readlink(layout.current_model) == "v0002"


def test_rollback_moves_only_the_pointer(layout):
    line(layout)
    before = sorted(os.listdir(layout.models))
    assert lifecycle.rollback(layout, "v0002") == {"from": "v0005", "to": "v0002"}
    assert os.readlink(layout.current_model) == "v0002"
    assert sorted(os.listdir(layout.models)) == before  # every version kept
    assert lifecycle.rollback(layout, "base")["to"] == "base"
    assert lifecycle.current_name(layout) is None
    with pytest.raises(lifecycle.LifecycleError, match="no such version"):
        lifecycle.rollback(layout, "v0042")
    with pytest.raises(lifecycle.LifecycleError, match="not a version name"):
        lifecycle.rollback(layout, "../etc")


def test_rollback_refused_while_a_worker_trains(layout):
    import fcntl

    line(layout)
    job = layout.active / "20261123T000000-000001-x"
    job.mkdir(parents=True)
    fd = os.open(job / ".worker.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a live worker holds
    try:
        with pytest.raises(lifecycle.LifecycleError, match="is training"):
            lifecycle.rollback(layout, "v0001")
    finally:
        os.close(fd)
    assert lifecycle.rollback(layout, "v0001")["to"] == "v0001"  # a paused job does not block


def test_models_lock_serialises_changes(layout):
    line(layout)
    with lifecycle.models_lock(layout, "consolidation"), \
            pytest.raises(lifecycle.Busy, match="consolidation, pid"):
        lifecycle.rollback(layout, "v0001", lock_timeout=0.3)  # second fd: flock still excludes
    assert os.readlink(layout.current_model) == "v0005"


def test_snapshot_is_a_verified_copy_that_records_its_base(layout):
    line(layout)
    res = lifecycle.snapshot(layout, "2026-11-20")
    assert res["status"] == "created" and res["needs"] == "v0003"
    snap = layout.snapshots / "2026-11-20"
    man = atomic.verify_manifest(snap)
    assert man["snapshot_of"] == "v0005" and man["needs"] == "v0003" and man["kind"] == "adapter"
    src = atomic.read_json(layout.models / "v0005" / "manifest.json")["files"]
    assert {k: v["sha256"] for k, v in man["files"].items()} == {k: v["sha256"] for k, v in src.items()}
    assert not [p for p in os.listdir(layout.snapshots) if p.startswith(".")]

    assert lifecycle.snapshot(layout, "2026-11-20")["status"] == "exists"  # once per day
    assert lifecycle.snapshot(layout, "2026-11-21")["status"] == "unchanged"  # same model
    lifecycle.rollback(layout, "v0003")
    assert lifecycle.snapshot(layout, "2026-11-21")["needs"] is None  # a full one needs nothing

    # A damaged snapshot of the day is set aside and made again.
    truncate(layout.snapshots / "2026-11-21" / "model.safetensors")
    models.set_current(layout, "v0004")
    assert lifecycle.snapshot(layout, "2026-11-21")["status"] == "created"
    assert [p for p in os.listdir(layout.snapshots) if p.startswith("corrupt-2026-11-21")]

    # A current version that does not verify is not snapshotted.
    fake_version(layout, "v0006", parent="v0004", base=str(layout.models / "v0003"))
    models.set_current(layout, "v0006")
    truncate(layout.models / "v0006" / "adapter_model.safetensors")
    with pytest.raises(lifecycle.LifecycleError, match="not snapshotting v0006"):
        lifecycle.snapshot(layout, "2026-11-22")
    assert not (layout.snapshots / "2026-11-22").exists()


def test_gc_dry_run_never_lists_current_its_chain_or_a_snapshots_needs(layout):
    line(layout)
    lifecycle.snapshot(layout, "2026-11-01")  # of v0005: needs v0003
    fake_version(layout, "v0006", kind="full", parent="v0005", nbytes=5000)  # a later consolidation
    fake_version(layout, "v0007", parent="v0006", base=str(layout.models / "v0006"))
    fake_version(layout, "v0008", parent="v0007", base=str(layout.models / "v0006"))
    lifecycle.rollback(layout, "v0007")  # v0008 is newer than current
    (layout.models / "rejected-v0009-of-v0007-20261101T000000").mkdir()
    (layout.models / ".tmp-v0009-somejob").mkdir()  # a publish that died
    policy = RetentionConfig(keep_versions=1, keep_snapshots=5, keep_rejected=0)

    plan = lifecycle.gc(layout, policy, dry_run=True)
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

    done = lifecycle.gc(layout, policy, dry_run=False)
    assert {Path(i.path).name for i in done.delete} == gone and not done.errors
    assert [v.name for v in lifecycle.list_versions(layout)] == ["v0003", "v0006", "v0007", "v0008"]
    for name in ("v0003", "v0006", "v0007", "v0008"):
        assert lifecycle.problems(layout, name) == []
    assert not [p for p in os.listdir(layout.models) if p.startswith((".", "rejected-"))]


def test_gc_byte_limit_never_strands_an_adapter_without_its_base(layout):
    from trainerd.guards import dir_bytes

    fake_version(layout, "v0001", kind="full", nbytes=5000)
    fake_version(layout, "v0002", parent="v0001", base=str(layout.models / "v0001"))
    fake_version(layout, "v0003")
    fake_version(layout, "v0004", parent="v0003")
    models.set_current(layout, "v0004")
    total = dir_bytes(layout.models)
    # Just over the limit by less than one adapter: the oldest (v0001) must not go first,
    # because v0002 loads on it; v0002 goes, and then the total fits.
    limit = total - dir_bytes(layout.models / "v0002") + 10
    plan = lifecycle.gc(layout, RetentionConfig(keep_versions=0, max_models_gb=limit / 1024**3))
    assert [Path(i.path).name for i in plan.delete] == ["v0002"]
    assert plan.protected == {"v0004": "current", "v0003": "parent chain of current (v0004)"}
    # Tighter: both go, adapter first; current and its chain never, even over the limit.
    plan = lifecycle.gc(layout, RetentionConfig(keep_versions=0, max_models_gb=1 / 1024**3))
    assert [Path(i.path).name for i in plan.delete] == ["v0001", "v0002"]
    assert plan.notes and "protected" in plan.notes[0]


def test_gc_prunes_old_snapshots_and_done_data_but_keeps_job_records(layout):
    fake_version(layout, "v0001")
    models.set_current(layout, "v0001")
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        (layout.snapshots / day).mkdir()
        (layout.snapshots / day / "w").write_bytes(b"x" * 10)
        atomic.write_manifest(layout.snapshots / day, {"snapshot_of": "v0001", "needs": None})
    for i in range(3):
        d = layout.done / f"2026112{i}T000000-00000{i}-f"
        d.mkdir(parents=True)
        write_jsonl(d / "data.jsonl", chat_rows(4))
        (d / "job.json").write_text("{}")
    plan = lifecycle.gc(layout, RetentionConfig(keep_snapshots=1, keep_done_data=1), dry_run=False)
    assert sorted(os.listdir(layout.snapshots)) == ["2026-11-03"]
    jobs = sorted(os.listdir(layout.done))
    for d in jobs[:2]:
        assert sorted(os.listdir(layout.done / d)) == ["data-removed.json", "job.json"]
        assert "keep_done_data" not in json.dumps(plan.protected)
    assert (layout.done / jobs[2] / "data.jsonl").exists()
    note = atomic.read_json(layout.done / jobs[0] / "data-removed.json")
    assert note["files"] == ["data.jsonl"] and "retention" in note["reason"]


def test_replay_sample_is_deterministic_excludes_the_job_and_survives_new_done_jobs(layout):
    for i, tag in enumerate(["a", "b", "c"]):
        d = layout.done / f"2026112{i}T000000-00000{i}-{tag}"
        d.mkdir(parents=True)
        write_jsonl(d / "data.jsonl", chat_rows(20, tag))
    job = layout.active / "20261124T000000-000009-new"
    job.mkdir(parents=True)
    rows, rec = lifecycle.replay_for_job(layout, job, fraction=0.5, new_examples=10)
    assert len(rows) == 5 and rec["examples"] == 5 and rec["pool_examples"] == 60
    assert sum(rec["sources"].values()) == 5 and "sources" in atomic.read_json(job / "replay.json")
    # Same id, same pick, from a clean job dir; another id, another pick.
    other = layout.active / "20261124T000000-000010-other"
    other.mkdir()
    twin = layout.active.parent / "twin" / job.name
    twin.mkdir(parents=True)
    assert lifecycle.replay_for_job(layout, twin, 0.5, 10)[0] == rows
    assert lifecycle.replay_for_job(layout, other, 0.5, 10)[0] != rows

    # A later attempt reuses the pick even though done/ has grown since.
    d = layout.done / "20261123T000000-000008-d"
    d.mkdir()
    write_jsonl(d / "data.jsonl", chat_rows(50, "d"))
    again, rec2 = lifecycle.replay_for_job(layout, job, 0.5, 10)
    assert again == rows and rec2 == rec
    # The job's own data is never replayed into itself; off means nothing.
    (layout.done / job.name).mkdir()
    write_jsonl(layout.done / job.name / "data.jsonl", chat_rows(5, "self"))
    picked, _, _ = lifecycle.sample_examples(layout, 1000, 1, exclude=job.name)
    assert not [r for r in picked if b"self" in r]
    assert lifecycle.replay_for_job(layout, other, 0.0, 10) == ([], None)


def test_lifecycle_and_schedule_import_no_torch():
    code = ("import sys, trainerd.lifecycle, trainerd.schedule\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------ real training
def _run_once(base: Path) -> None:
    cli("run", "--base-dir", base, "--once", timeout=600)


@pytest.mark.slow
def test_model_line_rollback_export_and_corruption(tmp_path, tiny_model):
    base = make_base(tmp_path / "b", tiny_model, "[train]\nwarmup_steps = 0\n")
    layout = Layout.at(base)
    write_jsonl(base / "inbox" / "a_first.jsonl", chat_rows(8, "alpha"))
    write_jsonl(base / "inbox" / "b_second.jsonl", chat_rows(8, "beta"))
    _run_once(base)
    assert [v.name for v in lifecycle.list_versions(layout)] == ["v0001", "v0002"]
    assert lifecycle.chain(layout, "v0002") == ["v0002", "v0001"]
    assert lifecycle.show(layout, "v0002")["parent"] == "v0001"

    # Roll back; the next job trains from v0001.
    assert lifecycle.rollback(layout, "v0001") == {"from": "v0002", "to": "v0001"}
    write_jsonl(base / "inbox" / "c_third.jsonl", chat_rows(8, "gamma"))
    _run_once(base)
    v3 = lifecycle.show(layout, "current")
    assert v3["name"] == "v0003" and v3["parent"] == "v0001" and v3["ok"]
    assert v3["jobs"][0]["name"] == "c_third.jsonl"
    assert lifecycle.chain(layout, "v0003") == ["v0003", "v0001"]

    # Exports reload with plain transformers / peft, no trainerd involved.
    out_a, out_m = tmp_path / "export-adapter", tmp_path / "export-merged"
    lifecycle.export(layout, "v0003", out_a)
    lifecycle.export(layout, "v0003", out_m, merged=True)
    code = f"""
import torch
from peft import PeftModel, PeftConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
a = {str(out_a)!r}; m = {str(out_m)!r}
base = PeftConfig.from_pretrained(a).base_model_name_or_path
assert base == {str(tiny_model)!r}, base
tok = AutoTokenizer.from_pretrained(a)
ids = tok.apply_chat_template([{{"role": "user", "content": "Say the gamma code number 3."}}],
                              add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
with torch.no_grad():
    la = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), a).eval()(ids).logits
    lm = AutoModelForCausalLM.from_pretrained(m).eval()(ids).logits
    lb = AutoModelForCausalLM.from_pretrained(base).eval()(ids).logits
assert torch.allclose(la, lm, atol=1e-4, rtol=1e-4), (la - lm).abs().max()
assert not torch.allclose(la, lb, atol=1e-4), "the adapter changed nothing?"
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    for d in (out_a, out_m):
        atomic.verify_manifest(d)

    # A truncated safetensors file: show says so, rollback refuses, current stays.
    truncate(layout.models / "v0002" / "adapter_model.safetensors")
    bad = lifecycle.show(layout, "v0002")
    assert not bad["ok"] and "adapter_model.safetensors" in bad["problems"][0]
    with pytest.raises(lifecycle.LifecycleError):
        lifecycle.rollback(layout, "v0002")
    assert lifecycle.current_name(layout) == "v0003"


# ------------------------------------------------------------------ wiring (active once applied)
def _wired(section: str) -> bool:
    from trainerd.config import Config

    return section in Config.model_fields


@pytest.mark.slow
@pytest.mark.skipif(not _wired("replay"), reason="[replay] is not in the config yet")
def test_replayed_examples_join_a_real_job_once(tmp_path, tiny_model):
    base = make_base(tmp_path / "b", tiny_model, "[replay]\nfraction = 0.5\n")
    layout = Layout.at(base)
    write_jsonl(base / "inbox" / "a_old.jsonl", chat_rows(8, "old"))
    write_jsonl(base / "inbox" / "b_new.jsonl", chat_rows(8, "new"))
    _run_once(base)
    v1, v2 = (atomic.read_json(layout.models / v / "manifest.json") for v in ("v0001", "v0002"))
    assert v1["replay"] is None and v1["examples_trained"] == 8  # nothing done yet to replay
    assert v2["replay"]["examples"] == 4 and v2["examples_trained"] == 12
    [job] = [d for d in layout.done.iterdir() if d.name.endswith("b_new")]
    assert list(v2["replay"]["sources"]) == [next(d.name for d in layout.done.iterdir() if d.name.endswith("a_old"))]
    rec = atomic.read_json(job / "replay.json")
    assert len((job / "replay.jsonl").read_text().splitlines()) == 4 == sum(map(len, rec["sources"].values()))


def _cli_has(*command: str) -> bool:
    from typer.main import get_command

    from trainerd.cli import app

    group = get_command(app)
    for name in command:
        group = getattr(group, "commands", {}).get(name)
        if group is None:
            return False
    return True


@pytest.mark.skipif(not _cli_has("models", "rollback"), reason="lifecycle CLI commands not wired yet")
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
    assert r.returncode == 1 and "refusing" in r.stderr and lifecycle.current_name(layout) == "v0002"
    dry = cli("gc", "--dry-run", "-b", b).stdout
    assert "would delete version" in dry and "kept v0002: current" in dry
    assert len(os.listdir(layout.models)) == 6  # nothing deleted by a dry run
    cli("gc", "-b", b)
    assert [v.name for v in lifecycle.list_versions(layout)] == ["v0001", "v0002", "v0003", "v0005"]
