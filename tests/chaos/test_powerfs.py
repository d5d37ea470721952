"""powerfs itself (the model of a disk with a volatile cache), and the product's
durability barriers on it: what the power-cut campaign relies on, checked in seconds."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from tests.chaos.powerfs import PowerMount, unavailable
from tests.chaos.powerfs.model import MODES, Model, Node, materialize
from trainerd import atomic
from trainerd.config import QueueConfig
from trainerd.paths import Layout
from trainerd.queue import Queue


def _model(tmp_path: Path) -> Model:
    m = Model(tmp_path / "store")
    m.store.mkdir()
    m.nodes[m.new_id()] = Node("d", 0o755, 0)
    m.sync_all()
    return m


def _put(m: Model, path: str, data: bytes) -> int:
    n = m.create(path, "f", 0o644, 1)
    m.path_of(n).write_bytes(data)
    m.write(n, 0, len(data))
    return n


def _cut(m: Model, tmp_path: Path, mode: str = "all", seed: int = 0) -> Path:
    out = tmp_path / f"crash-{mode}-{seed}"
    materialize(m.crash_state(mode, random.Random(seed)), out)
    return out


def test_only_what_an_fsync_covered_survives_a_cut(tmp_path):
    m = _model(tmp_path)
    m.create("/a", "d", 0o755, 1)
    m.fsync_dir(1)
    f = _put(m, "/a/f", b"durable")
    m.fsync_file(f)
    g = _put(m, "/a/g", b"bytes durable, name not")
    m.fsync_file(g)
    m.fsync_dir(m.lookup("/a"))  # makes f's and g's names durable, as of now
    _put(m, "/a/h", b"name durable, bytes not")
    m.fsync_dir(m.lookup("/a"))
    _put(m, "/a/late", b"nothing durable")
    m.write(f, 0, 3)
    m.path_of(f).write_bytes(b"NEW" + b"durable"[3:])
    crash = _cut(m, tmp_path)
    assert sorted(os.listdir(crash / "a")) == ["f", "g", "h"]
    assert (crash / "a" / "f").read_bytes() == b"durable"  # the rewrite was never fsynced
    assert (crash / "a" / "h").read_bytes() == b""


def test_a_rename_made_durable_by_one_folder_moves_the_name_on_both_sides(tmp_path):
    m = _model(tmp_path)
    for d in ("/inbox", "/jobs"):
        m.create(d, "d", 0o755, 1)
    m.fsync_dir(1)
    f = _put(m, "/inbox/x", b"data")
    m.fsync_file(f)
    m.fsync_dir(m.lookup("/inbox"))
    m.create("/jobs/j", "d", 0o755, 2)
    m.rename("/inbox/x", "/jobs/j/data", 3)
    m.fsync_dir(m.lookup("/jobs/j"))  # the rename, but not /jobs/j's own name
    crash = _cut(m, tmp_path)
    assert os.listdir(crash / "inbox") == [] and os.listdir(crash / "jobs") == []  # lost: j never named
    m.fsync_dir(m.lookup("/jobs"))
    crash = _cut(m, tmp_path, seed=1)
    assert (crash / "jobs" / "j" / "data").read_bytes() == b"data" and os.listdir(crash / "inbox") == []


@pytest.mark.parametrize("mode", MODES)
def test_a_file_moved_without_any_fsync_is_in_exactly_one_place_after_any_cut(tmp_path, mode):
    """The intake's promise between its renames and its barrier, for every kind of cut."""
    m = _model(tmp_path)
    m.create("/inbox", "d", 0o755, 1)
    m.create("/queued", "d", 0o755, 1)
    m.sync_all()
    f = _put(m, "/inbox/x", b"payload")
    m.fsync_file(f)
    m.fsync_dir(m.lookup("/inbox"))
    m.create("/incoming", "d", 0o755, 2)
    m.create("/incoming/j", "d", 0o755, 2)
    m.rename("/inbox/x", "/incoming/j/data", 3)
    _put(m, "/incoming/j/job.json", b"{}")
    m.rename("/incoming/j", "/queued/j", 4)
    for seed in range(40):
        crash = _cut(m, tmp_path, mode, seed)
        found = [p for p in crash.rglob("*") if p.is_file() and p.read_bytes() == b"payload"]
        assert len(found) == 1, (seed, [str(p.relative_to(crash)) for p in crash.rglob("*")])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def powerfs(tmp_path):
    why = unavailable()
    if why:
        pytest.skip(why)
    fs = PowerMount(tmp_path / "fs")
    fs.start()
    yield fs
    fs.kill_users()
    fs.stop()


def test_intake_says_queued_only_once_the_filesystem_was_told_to_keep_it(powerfs):
    """Regression (issue 20): intake's barrier was one syncfs(2) per slice, which FUSE never
    passes on; on such a disk a power cut after "queued" took the job back."""
    layout = Layout.at(powerfs.mount / "base")
    layout.ensure()
    powerfs.sync()
    data = b'{"text": "hello"}\n'
    tmp = layout.inbox / ".a.jsonl.part"
    tmp.write_bytes(data)
    os.utime(tmp, (1, 1))
    atomic.fsync_path(tmp)
    tmp.rename(layout.inbox / "a.jsonl")
    atomic.fsync_dir(layout.inbox)
    taken = Queue(layout, QueueConfig(settle_seconds=0)).ingest()
    assert len(taken) == 1
    powerfs.cut("all", 0, "test")
    powerfs.remount()
    job = layout.queued("normal") / taken[0].id
    assert os.listdir(layout.inbox) == []
    assert atomic.sha256_file(job / "data.jsonl") == _sha(data)
    assert json.loads((job / "job.json").read_text())["sha256"] == _sha(data)


def test_a_new_base_dir_keeps_a_job_queued_into_it_across_a_power_cut(powerfs, tmp_path):
    """Regression (issue 20): Layout.ensure made its folders without fsyncing their parents,
    so a job renamed (and fsynced) into jobs/queued/normal/ of a fresh base dir was lost at
    a cut with the folder that held it."""
    layout = Layout.at(powerfs.mount / "base")
    layout.ensure()  # no sync: only what the product makes durable
    src = tmp_path / "b.jsonl"
    src.write_bytes(b'{"text": "b"}\n')
    ref = Queue(layout, QueueConfig(settle_seconds=0)).submit(src)  # `queue add`
    powerfs.cut("all", 0, "test")
    powerfs.remount()
    assert (layout.queued("normal") / ref.id / "data.jsonl").read_bytes() == src.read_bytes()
    assert all(d.is_dir() for d in layout.dirs())


def test_a_pruned_checkpoint_is_never_half_deleted_under_its_name_after_any_cut(powerfs, tmp_path):
    """Regression (the power campaign, issue 20): pruning renamed step-N aside without an
    fsync, then deleted its files; a disk that wrote back some deletes but not the rename
    showed step-N with files missing."""
    from trainerd.worker import checkpoints as ck

    job = powerfs.mount / "job"
    for step in (10, 20, 30):
        saved = ck.staging(job) / f"checkpoint-{step}"
        saved.mkdir(parents=True)
        for name in ("model.safetensors", "optimizer.pt", "trainer_state.json"):
            (saved / name).write_bytes(os.urandom(2000))
        ck.commit(job, saved, {"step": step})
    powerfs.sync()
    ck.prune(job, keep=1)
    for seed in range(12):
        for mode in MODES:
            crash = powerfs.crash_state(mode, seed, tmp_path / f"crash-{mode}-{seed}")
            for step in sorted((crash / "job" / "checkpoints").glob("step-*")):
                atomic.verify_manifest(step)  # complete or invisible


def test_an_intake_a_cut_interrupted_is_acknowledged_when_recovery_finishes_it(tmp_path):
    """Found by the power campaign (seed 20261201, round 2): recovery finished an intake a
    cut had interrupted but said only "finished an interrupted intake", never that the
    file was queued, so its delivery was never acknowledged."""
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    stage = layout.incoming / "20261201T090127-385674-chaos4"
    stage.mkdir()
    (stage / "data.jsonl").write_bytes(b'{"text": "x"}\n')  # renamed out of the inbox, then the cut
    notes = Queue(layout, QueueConfig(settle_seconds=0)).recover()
    assert notes == [f"chaos4.jsonl: queued as {stage.name} (finished an interrupted intake)"]
    assert (layout.queued("normal") / stage.name / "job.json").is_file()


def test_a_staging_folder_left_with_only_a_temp_job_json_is_cleared_at_recovery(tmp_path):
    """Found by the power campaign (seed 20261203, cut 11, subset): the disk kept an
    intake's staging folder and its temp job.json but not the data's rename; recovery left
    the folder "for inspection" for good (the data, still in the inbox, was taken in again)."""
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    stage = layout.incoming / "20261201T095200-639372-chaos4"
    stage.mkdir()
    (stage / ".tmp-job.json.p9bg326t").write_bytes(b"")
    notes = Queue(layout, QueueConfig(settle_seconds=0)).recover()
    assert not stage.exists() and "removed an interrupted copy" in notes[0]
