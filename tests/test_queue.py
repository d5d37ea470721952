import fcntl
import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import chat_rows, tmpfs, write_jsonl
from trainerd.config import QueueConfig
from trainerd.inbox import Settler
from trainerd.jobs import ERROR_JSON, JobMeta, JobState, Outcome, Priority
from trainerd.paths import Layout
from trainerd.queue import ORIGINAL, REJECTED_MARK, Queue, QueueError, save_meta


@pytest.fixture
def q(tmp_path):
    layout = Layout.at(tmp_path)
    layout.ensure()
    # Settling has its own test (with a clock of its own); here files are taken at first look.
    return Queue(layout, QueueConfig(settle_seconds=0, max_file_mb=1))


def states(q):
    return {r.id: r.state for r in q.list()}


def reason(ref):
    return json.loads((ref.path / ERROR_JSON).read_text())["reason"]


def test_ingest_moves_the_file_in_unchanged_with_metadata(q):
    src = write_jsonl(q.layout.inbox / "data.jsonl", chat_rows(5))
    raw = src.read_bytes()
    [ref] = q.ingest()
    assert ref.state == JobState.QUEUED and ref.priority == Priority.NORMAL
    assert not src.exists()
    assert (ref.path / "data.jsonl").read_bytes() == raw
    meta = ref.meta()
    assert meta.original_name == "data.jsonl" and meta.examples == 5 and meta.size == len(raw)
    import hashlib

    assert meta.sha256 == hashlib.sha256(raw).hexdigest()


def test_same_name_twice_makes_two_jobs_sorted_by_arrival(q):
    write_jsonl(q.layout.inbox / "data.jsonl", chat_rows(2))
    [a] = q.ingest()
    write_jsonl(q.layout.inbox / "data.jsonl", chat_rows(3))
    [b] = q.ingest()
    assert a.id != b.id and sorted([b.id, a.id]) == [a.id, b.id]
    assert b.meta().examples == 3


def test_maildir_rules_and_settle_time(q):
    clock = [1000.0]
    q.cfg.settle_seconds = 2.0
    q.settler = Settler(clock=lambda: clock[0])
    inbox = q.layout.inbox
    write_jsonl(inbox / ".hidden.jsonl", chat_rows(1))
    (inbox / "x.jsonl.part").write_text("{}")
    (inbox / "y.jsonl.tmp").write_text("{}")
    fresh = write_jsonl(inbox / "fresh.jsonl", chat_rows(1), settle=False)
    assert q.ingest() == []  # nothing delivered-and-settled yet
    assert q.pending_inbox() == 1  # only `fresh` is waiting to settle
    clock[0] += 5
    [ref] = q.ingest()
    assert ref.meta().original_name == "fresh.jsonl" and not fresh.exists()
    assert sorted(os.listdir(inbox)) == [".hidden.jsonl", "x.jsonl.part", "y.jsonl.tmp"]


def test_subfolder_files_keep_their_folder_name(q):
    write_jsonl(q.layout.inbox / "team-a" / "d.jsonl", chat_rows(2))
    [ref] = q.ingest()
    assert ref.meta().source_folder == "team-a"


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir", "empty", "badjson", "not_jsonl", "too_big"])
def test_bad_entries_are_rejected_with_a_reason_and_good_ones_still_flow(q, kind):
    inbox = q.layout.inbox
    name = "bad.jsonl"
    if kind == "symlink":
        os.symlink("/etc/passwd", inbox / name)
    elif kind == "fifo":
        os.mkfifo(inbox / name)
    elif kind == "dir":
        (inbox / name).mkdir()
    elif kind == "empty":
        (inbox / name).write_bytes(b"")
    elif kind == "badjson":
        (inbox / name).write_text(json.dumps(chat_rows(1)[0]) + "\n{oops\n")
    elif kind == "not_jsonl":
        name = "notes.txt"
        (inbox / name).write_text("hello")
    elif kind == "too_big":
        (inbox / name).write_bytes(b"x" * (2 * 1024 * 1024))
    old = time.time() - 60
    os.utime(inbox / name, (old, old), follow_symlinks=False)
    write_jsonl(inbox / "good.jsonl", chat_rows(2))

    refs = {r.meta().original_name: r for r in q.ingest()}
    assert refs["good.jsonl"].state == JobState.QUEUED
    bad = refs[name]
    assert bad.state == JobState.FAILED
    expected = {"symlink": "symlink", "fifo": "not a regular file", "dir": "folder", "empty": "no examples",
                "badjson": "line 2: invalid JSON", "not_jsonl": "only .jsonl", "too_big": "max_file_mb"}[kind]
    assert expected in reason(bad)
    assert os.listdir(inbox) == []
    if kind == "symlink":  # moved as a link, never followed or read
        assert os.path.islink(bad.path / ORIGINAL) and os.readlink(bad.path / ORIGINAL) == "/etc/passwd"


def test_entry_that_cannot_be_moved_gets_a_note_beside_it(q, monkeypatch):
    (q.layout.inbox / "x.txt").write_text("hi")
    old = time.time() - 60
    os.utime(q.layout.inbox / "x.txt", (old, old))
    real_rename = os.rename

    def deny(src, dst, *a, **k):
        if str(src).endswith("x.txt"):
            raise PermissionError(13, "Permission denied")
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", deny)
    assert q.ingest() == []
    note = json.loads((q.layout.inbox / ("x.txt" + REJECTED_MARK)).read_text())
    assert "could not be moved" in note["reason"]
    assert q.ingest() == [] and q.pending_inbox() == 0  # told once; not retried every poll
    assert os.listdir(q.layout.incoming) == []


def _queue_n(q, prio, n, tag):
    refs = []
    for i in range(n):
        p = q.layout.base / f"{tag}{i}.jsonl"
        write_jsonl(p, chat_rows(1))
        refs.append(q.submit(p, prio))
    return refs


def test_claim_order_priority_then_fifo(q):
    low = _queue_n(q, Priority.LOW, 2, "l")
    normal = _queue_n(q, Priority.NORMAL, 2, "n")
    high = _queue_n(q, Priority.HIGH, 2, "h")
    order = []
    while (ref := q.claim()) is not None:
        order.append(ref.id)
        q.finish(ref)
    assert order == [r.id for r in high + normal + low]


def test_active_job_left_by_a_crash_is_claimed_first(q):
    a, b = _queue_n(q, Priority.NORMAL, 2, "x")
    claimed = q.claim()
    assert claimed.id == a.id
    assert q.claim().id == a.id  # still active: resumed before anything else


def test_backoff_does_not_block_other_jobs(q):
    a, b = _queue_n(q, Priority.HIGH, 2, "x")
    ref = q.claim()
    meta = q.record_attempt_start(ref, 123, Priority.HIGH)
    meta = q.record_attempt_end(ref, Outcome.CRASHED, 1, "boom")
    assert meta.failed_attempts == 1
    q.release(ref, not_before=time.time() + 60)
    assert q.claim().id == b.id  # a waits for its back-off
    q.finish(q.list(JobState.ACTIVE)[0])
    assert q.claim() is None
    assert q.next_wakeup() > time.time()
    assert q.claim(now=time.time() + 61).id == a.id
    assert q.list(JobState.ACTIVE)[0].meta().attempts[0].outcome == Outcome.CRASHED


def test_released_job_returns_to_the_priority_it_was_claimed_from(q):
    [a] = _queue_n(q, Priority.LOW, 1, "x")
    ref = q.claim()
    q.record_attempt_start(ref, 1, Priority.LOW)
    back = q.release(ref)
    assert back.priority == Priority.LOW


def test_outcomes_that_count_as_attempts():
    # A user's stop, a full disk, and the OOM/NaN fallbacks (which have their own limits)
    # are not failed attempts; crashes, kills and data errors are.
    for o in (Outcome.FINISHED, Outcome.STOPPED, Outcome.DISK_LOW, Outcome.RESOURCE_ERROR, Outcome.NONFINITE):
        assert not o.counts_as_attempt
    for o in (Outcome.CRASHED, Outcome.DATA_ERROR, Outcome.INTERRUPTED):
        assert o.counts_as_attempt
    assert Outcome.from_exit(0) == Outcome.FINISHED and Outcome.from_exit(-9) == Outcome.CRASHED
    assert Outcome.from_exit(6) == Outcome.DISK_LOW and Outcome.from_exit(7) == Outcome.NONFINITE
    assert Outcome.STALLED.counts_as_attempt and not Outcome.MODEL_UNAVAILABLE.counts_as_attempt
    assert Outcome.from_exit(8) == Outcome.MODEL_UNAVAILABLE


def test_the_daemons_death_counts_but_earns_no_back_off():
    from trainerd.jobs import Attempt

    meta = JobMeta(id="x", original_name="x.jsonl", sha256="", size=0, examples=1, attempts=[
        Attempt(number=1, started_at=0, outcome=Outcome.INTERRUPTED),
        Attempt(number=2, started_at=0, outcome=Outcome.INTERRUPTED),
        Attempt(number=3, started_at=0, outcome=Outcome.CRASHED)])
    assert meta.failed_attempts == 3 and meta.own_failures == 1
    assert QueueConfig().backoff_after(meta.own_failures) == 30  # not the 600 s of a third failure


def test_oom_fallback_keeps_the_effective_batch_exact():
    from trainerd.jobs import fallback_micro_batch

    seq, mb = [], 8
    while (mb := fallback_micro_batch(8, mb)) is not None:
        seq.append(mb)
    assert seq == [4, 2, 1]
    assert fallback_micro_batch(6, 6) == 3 and fallback_micro_batch(6, 3) == 1
    assert fallback_micro_batch(12, 1) is None


def test_ingest_in_slices_takes_everything_and_says_when_more_is_left(q):
    for i in range(30):
        write_jsonl(q.layout.inbox / f"f{i}.jsonl", chat_rows(1))
    first = q.ingest(budget_seconds=1e-9)
    assert first.more and len(first) == 1
    rest = q.ingest()
    assert not rest.more and len(first) + len(rest) == 30
    assert q.counts()["queued"] == 30


def test_a_failed_move_leaves_no_empty_staging_folder(q, monkeypatch):
    write_jsonl(q.layout.inbox / "b.jsonl", chat_rows(1))
    real = os.rename

    def deny(src, dst, *a, **k):
        if str(src).endswith("b.jsonl"):
            raise PermissionError(13, "Permission denied")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", deny)
    assert q.ingest() == []
    assert os.listdir(q.layout.incoming) == []
    assert (q.layout.inbox / ("b.jsonl" + REJECTED_MARK)).exists()


def test_lost_job_json_is_rebuilt_from_the_data_at_recovery(q):
    [ref] = _queue_n(q, Priority.HIGH, 1, "x")
    (ref.path / "job.json").write_bytes(b"")  # as ext4 may leave it after a crash before sync
    notes = q.recover()
    assert any("rebuilt" in n for n in notes)
    meta = q.find(ref.id).meta()
    assert meta.examples == 1 and meta.priority == Priority.HIGH


def test_move_remove_requeue(q):
    a, b = _queue_n(q, Priority.NORMAL, 2, "x")
    moved = q.move(a.id, Priority.HIGH)
    assert moved.priority == Priority.HIGH and moved.meta().priority == Priority.HIGH
    q.remove(b.id)
    assert b.id not in states(q)
    ref = q.claim()
    with pytest.raises(QueueError, match="training right now"):
        q.remove(ref.id)
    with pytest.raises(QueueError, match="only queued"):
        q.move(ref.id, Priority.LOW)
    q.record_attempt_start(ref, 1, Priority.HIGH)
    q.record_attempt_end(ref, Outcome.CRASHED, 1, "boom")
    failed = q.fail(ref, "gave up")
    again = q.requeue(failed.id)
    meta = again.meta()
    assert again.state == JobState.QUEUED and meta.attempts == []
    assert meta.history[-1]["previous_error"] == "gave up"
    assert meta.history[-1]["previous_attempts"][0]["error"] == "boom"
    assert not (again.path / ERROR_JSON).exists()
    assert os.listdir(q.layout.incoming) == []
    with pytest.raises(QueueError, match="not a job id"):
        q.find("nope")
    with pytest.raises(QueueError, match="not a job id"):
        q.find("x" * 5000)  # no ENAMETOOLONG traceback
    with pytest.raises(QueueError, match="no job"):
        q.find("20260101T000000-000000-nope")


def test_requeue_refuses_a_rejected_entry_and_a_still_bad_file(q):
    os.symlink("/etc/passwd", q.layout.inbox / "l.jsonl")
    [rej] = q.ingest()
    with pytest.raises(QueueError, match="no data file"):
        q.requeue(rej.id)
    (q.layout.inbox / "bad.jsonl").write_text("{nope\n")
    old = time.time() - 60
    os.utime(q.layout.inbox / "bad.jsonl", (old, old))
    [bad] = q.ingest()
    with pytest.raises(QueueError, match="still does not validate"):
        q.requeue(bad.id)
    assert states(q)[bad.id] == JobState.FAILED  # put back where it was
    assert os.listdir(q.layout.incoming) == []


def test_recover_marks_interrupted_attempts(q):
    [a] = _queue_n(q, Priority.NORMAL, 1, "x")
    ref = q.claim()
    q.record_attempt_start(ref, 999999, Priority.NORMAL)
    closed, notes = q.close_interrupted()
    assert [r.id for r, _meta in closed] == [ref.id] and notes == []
    att = ref.meta().attempts[-1]
    assert att.outcome == Outcome.INTERRUPTED and att.ended_at and att.outcome.counts_as_attempt


def test_recover_finishes_or_undoes_each_crash_point_of_intake(q):
    inc = q.layout.incoming
    # 1. crashed after the data rename, before job.json
    (inc / "20260101T000000-000001-a").mkdir()
    write_jsonl(inc / "20260101T000000-000001-a" / "data.jsonl", chat_rows(2))
    # 2. crashed after job.json, before the rename into queued/
    (inc / "20260101T000000-000002-b").mkdir()
    write_jsonl(inc / "20260101T000000-000002-b" / "data.jsonl", chat_rows(3))
    save_meta(inc / "20260101T000000-000002-b", JobMeta(
        id="20260101T000000-000002-b", original_name="b.jsonl", sha256="x", size=1, examples=3,
        priority=Priority.HIGH))
    # 3. a `queue add` copy cut short: the user's original was never touched
    (inc / "20260101T000000-000003-c").mkdir()
    (inc / "20260101T000000-000003-c" / ".data.jsonl.part").write_text("{partial")
    # 4. somebody is working in this one right now (holds the flock)
    busy = inc / "20260101T000000-000004-d"
    busy.mkdir()
    fd = os.open(busy, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        notes = q.recover()
    finally:
        os.close(fd)
    s = states(q)
    assert s["20260101T000000-000001-a"] == JobState.QUEUED
    assert s["20260101T000000-000002-b"] == JobState.QUEUED
    assert q.find("20260101T000000-000002-b").priority == Priority.HIGH
    assert "20260101T000000-000003-c" not in s and any("interrupted copy" in n for n in notes)
    assert sorted(os.listdir(inc)) == ["20260101T000000-000004-d"]


def test_submit_copies_and_never_touches_the_users_file(q, tmp_path):
    src = write_jsonl(tmp_path / "mine.jsonl", chat_rows(4))
    before = (src.read_bytes(), src.stat().st_mtime_ns)
    ref = q.submit(src, Priority.LOW)
    assert (src.read_bytes(), src.stat().st_mtime_ns) == before
    assert ref.priority == Priority.LOW and ref.meta().examples == 4


@pytest.fixture
def full_fs(tmp_path):
    """A real 4 MB tmpfs (skipped where mounting is not allowed)."""
    with tmpfs(tmp_path / "fs", 4) as mnt:
        yield mnt


def _fill(path):
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_intake_cut_short_by_a_full_disk_finishes_when_space_returns_without_a_restart(full_fs):
    """Found by the full-disk campaign (tests/chaos/disk.py): job.json could not be written,
    the file sat in jobs/.incoming/ until the next daemon start. Now the next ingest after
    space returns finishes it, and a bad file still gets its reason."""
    layout = Layout.at(full_fs / "base")
    layout.ensure()
    q = Queue(layout, QueueConfig(settle_seconds=0))
    good = write_jsonl(layout.inbox / ".good.jsonl.tmp", chat_rows(3))
    bad = layout.inbox / ".bad.jsonl.tmp"
    bad.write_bytes(b'{"text": "ok"}\n{broken\n')
    _fill(full_fs / "filler")
    good.rename(layout.inbox / "good.jsonl")  # delivered by rename: needs no space
    bad.rename(layout.inbox / "bad.jsonl")
    assert q.ingest() == []  # nothing could be recorded
    (full_fs / "filler").unlink()
    q._retry_at = 0  # no need to wait for the retry interval in a test
    q.ingest()
    by_name = {r.meta().original_name: r for r in q.list()}
    assert by_name["good.jsonl"].state == JobState.QUEUED and by_name["good.jsonl"].meta().examples == 3
    assert by_name["bad.jsonl"].state == JobState.FAILED and "line 2" in reason(by_name["bad.jsonl"])
    assert os.listdir(layout.incoming) == [] and os.listdir(layout.inbox) == []


def test_a_rejection_cut_short_by_a_full_disk_still_lands_in_failed_with_a_reason(full_fs):
    """A symlink taken aside on a full disk: no room for job.json or error.json. Once space
    returns it is in failed/ with both, never a reasonless entry."""
    layout = Layout.at(full_fs / "base")
    layout.ensure()
    q = Queue(layout, QueueConfig(settle_seconds=0))
    _fill(full_fs / "filler")
    os.symlink("/etc/passwd", layout.inbox / "link.jsonl")
    q.ingest()
    assert os.path.exists("/etc/passwd")
    (full_fs / "filler").unlink()
    q._retry_at = 0
    q.ingest()
    [ref] = q.list()
    assert ref.state == JobState.FAILED and ref.meta().original_name.startswith("link")  # from the id
    assert "symlink" in reason(ref)
    assert os.path.islink(ref.path / ORIGINAL)
    assert os.listdir(layout.incoming) == []


def test_job_json_has_one_writer_the_queue():
    """Issue 17: nothing outside trainerd/queue/ writes job.json (the supervisor once did,
    beside the queue). The writer is record.save_meta; JobMeta itself only loads."""
    import trainerd
    from trainerd.jobs import JobMeta

    assert not hasattr(JobMeta, "save")
    src = Path(trainerd.__file__).parent
    writers = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                     if "save_meta(" in p.read_text() or "/ JOB_JSON, " in p.read_text())
    assert writers and all(w.startswith("queue/") for w in writers), writers


def test_a_preempted_job_goes_back_to_the_front_of_its_priority(q):
    """queue.preempt: released with front=True, it is claimed before a job that arrived
    before it (FIFO alone would take that one); the claim takes it off the front list."""
    [older] = _queue_n(q, Priority.LOW, 1, "old")
    [b] = _queue_n(q, Priority.NORMAL, 1, "b")
    ref = q.claim()
    assert ref.id == b.id
    q.record_attempt_start(ref, 1, Priority.NORMAL)
    q.move(older.id, Priority.NORMAL)  # now first by arrival in normal/
    q.release(ref, front=True)  # b was preempted
    assert q.claim().id == b.id
    assert not (q.layout.queued("normal") / ".front.json").exists()
    q.finish(q.list(JobState.ACTIVE)[0])
    assert q.claim().id == older.id


def test_the_front_list_forgets_jobs_the_user_took_away(q):
    a, b = _queue_n(q, Priority.NORMAL, 2, "x")
    ref = q.claim()
    q.record_attempt_start(ref, 1, Priority.NORMAL)
    q.release(ref, front=True)
    assert json.loads((q.layout.queued("normal") / ".front.json").read_text()) == [a.id]
    q.remove(a.id)
    assert q.claim().id == b.id
    assert not (q.layout.queued("normal") / ".front.json").exists()  # a's stale entry pruned


def test_claimable_above_sees_only_higher_priorities_out_of_back_off(q):
    [low] = _queue_n(q, Priority.LOW, 1, "l")
    assert q.claimable_above(Priority.LOW) is None and q.claimable_above(Priority.HIGH) is None
    [normal] = _queue_n(q, Priority.NORMAL, 1, "n")
    assert q.claimable_above(Priority.LOW).id == normal.id and q.claimable_above(Priority.NORMAL) is None
    ref = q.claim()
    q.record_attempt_start(ref, 1, Priority.NORMAL)
    q.release(ref, not_before=time.time() + 60)  # in back-off: it preempts nothing
    assert q.claimable_above(Priority.LOW) is None
    assert q.claimable_above(Priority.LOW, now=time.time() + 61).id == normal.id
    assert low.id in states(q)
