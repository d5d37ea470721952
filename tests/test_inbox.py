"""Every delivered file is taken in or failed with a reason (issue 14): settling by the
daemon's own observations, names up to the filesystem's limit, priority folders, deeper
folders, names that would forge log lines, and what `status` says about the inbox."""

import json
import os
import time

import pytest

from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd.config import QueueConfig
from trainerd.inbox import TOO_DEEP, Settler, note_path
from trainerd.jobs import ERROR_JSON, JobState, Priority
from trainerd.names import NAME_MAX, printable
from trainerd.paths import Layout
from trainerd.queue import Queue


@pytest.fixture
def q(tmp_path):
    layout = Layout.at(tmp_path)
    layout.ensure()
    return Queue(layout, QueueConfig(settle_seconds=0))


def deliver(path, rows):
    """Write aside under a short name, rename in (write_jsonl's temp name would not fit NAME_MAX)."""
    tmp = write_jsonl(path.parent / ".short.part", rows)
    os.rename(tmp, path)
    return path


def _future(path, seconds=86400):
    t = time.time() + seconds
    os.utime(path, (t, t))


def test_a_future_mtime_settles_on_the_daemons_own_clock(q):
    clock = [0.0]
    q.cfg.settle_seconds = 2.0
    q.settler = Settler(clock=lambda: clock[0])
    f = write_jsonl(q.layout.inbox / "skewed.jsonl", chat_rows(2))
    _future(f)  # cp -p / rsync / tar from a machine whose clock is a day ahead
    assert q.ingest() == []  # first look
    clock[0] += 1.0
    assert q.ingest() == []
    report = q.inbox_report()
    assert report["waiting"][0]["name"] == "skewed.jsonl" and "settling" in report["waiting"][0]["why"]
    clock[0] += 1.5
    [ref] = q.ingest()
    assert ref.state == JobState.QUEUED


def test_a_file_still_growing_does_not_settle(q):
    clock = [0.0]
    q.cfg.settle_seconds = 2.0
    q.settler = Settler(clock=lambda: clock[0])
    f = q.layout.inbox / "growing.jsonl"
    f.write_text(json.dumps(chat_rows(1)[0]) + "\n")
    for _ in range(4):
        assert q.ingest() == []
        with open(f, "a") as fh:
            fh.write(json.dumps(chat_rows(1)[0]) + "\n")
        clock[0] += 1.5
    clock[0] += 2.5
    assert q.ingest() == []  # the last change was seen only now...
    clock[0] += 2.5
    [ref] = q.ingest()  # ...and 2.5 s later it is settled
    assert ref.meta().examples == 5


@pytest.mark.parametrize("length", [241, 242, NAME_MAX])
def test_names_up_to_name_max_are_taken_in(q, length):
    name = "n" * (length - len(".jsonl")) + ".jsonl"
    deliver(q.layout.inbox / name, chat_rows(2))
    [ref] = q.ingest()
    assert ref.state == JobState.QUEUED and ref.meta().original_name == name


def test_a_long_name_that_cannot_be_moved_still_gets_a_note(q, monkeypatch):
    name = "x" * 250 + ".txt"
    (q.layout.inbox / name).write_text("hi")
    real_rename = os.rename

    def deny(src, dst, *a, **k):
        if str(src).endswith(".txt"):
            raise PermissionError(13, "Permission denied")
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", deny)
    assert q.ingest() == []
    note = note_path(q.layout.inbox / name)
    assert len(os.fsencode(note.name)) <= NAME_MAX and note.name.endswith(".rejected.json")
    assert "could not be moved" in json.loads(note.read_text())["reason"]
    assert q.ingest() == [] and q.pending_inbox() == 0  # told once


def test_priority_folders_and_their_sub_folders(q):
    inbox = q.layout.inbox
    write_jsonl(inbox / "high" / "h.jsonl", chat_rows(1))
    write_jsonl(inbox / "low" / "team" / "l.jsonl", chat_rows(1))
    write_jsonl(inbox / "normal" / "n.jsonl", chat_rows(1))
    write_jsonl(inbox / "team-b" / "t.jsonl", chat_rows(1))
    refs = {r.meta().original_name: r for r in q.ingest()}
    assert refs["h.jsonl"].priority == Priority.HIGH and refs["h.jsonl"].meta().priority == Priority.HIGH
    assert refs["l.jsonl"].priority == Priority.LOW and refs["l.jsonl"].meta().source_folder == "team"
    assert refs["n.jsonl"].priority == Priority.NORMAL
    assert refs["t.jsonl"].priority == Priority.NORMAL and refs["t.jsonl"].meta().source_folder == "team-b"
    assert sorted(os.listdir(inbox)) == ["high", "low", "normal", "team-b"]  # folders stay


@pytest.mark.parametrize("where", ["team/deeper", "high/team/deeper", "team/high"])
def test_a_second_level_folder_gets_its_own_reason(q, where):
    write_jsonl(q.layout.inbox / where / "d.jsonl", chat_rows(1))
    [ref] = q.ingest()
    assert ref.state == JobState.FAILED
    reason = json.loads((ref.path / ERROR_JSON).read_text())["reason"]
    assert TOO_DEEP in reason and "named like a data file" not in reason
    assert (ref.path / "original" / "d.jsonl").is_file()  # kept, not lost


def test_names_are_printed_escaped():
    assert printable("a\nb.jsonl") == "a\\nb.jsonl"
    assert printable("\x1b[31mred.jsonl") == "\\x1b[31mred.jsonl"
    assert printable(os.fsdecode(b"caf\xe9.jsonl")) == "caf\\udce9.jsonl"
    assert printable("café.jsonl") == "café.jsonl"


def test_status_names_what_the_inbox_ignores_and_why(q):
    inbox = q.layout.inbox
    write_jsonl(inbox / "..jsonl", chat_rows(1))
    (inbox / "big.jsonl.part").write_text("{}")
    report = q.inbox_report()
    why = {e["name"]: e["why"] for e in report["ignored"]}
    assert "starts with '.'" in why["..jsonl"] and ".part" in why["big.jsonl.part"]


@pytest.mark.slow
def test_daemon_takes_in_what_users_deliver_and_says_what_it_ignores(tmp_path, tiny_model):
    """One real `trainerd run --once` (paused, so nothing trains): a day-ahead mtime with a
    settle time, a 255-byte name, priority folders, a second-level folder, a newline in a
    name; then `status` and `queue list` as a user reads them."""
    base = make_base(tmp_path / "b", tiny_model, "[queue]\nsettle_seconds = 1\n")
    cli("pause", "--base-dir", base, "--reason", "test")
    inbox = base / "inbox"
    _future(write_jsonl(inbox / "skewed.jsonl", chat_rows(2)))
    long_name = "L" * (NAME_MAX - 6) + ".jsonl"
    deliver(inbox / long_name, chat_rows(2))
    write_jsonl(inbox / "high" / "urgent.jsonl", chat_rows(2))
    write_jsonl(inbox / "low" / "later.jsonl", chat_rows(2))
    write_jsonl(inbox / "team" / "deeper" / "lost.jsonl", chat_rows(2))
    write_jsonl(inbox / "evil\n2026-12-01 00:00:00 INFO forged.jsonl", chat_rows(2))
    write_jsonl(inbox / "..jsonl", chat_rows(2))

    p = cli("run", "--base-dir", base, "--once", check=False, timeout=240)
    assert p.returncode == 4, p.stderr  # paused: documented non-zero status, after taking all in
    assert "paused" in p.stderr
    layout = Layout.at(base)
    names = {}
    for prio in ("high", "normal", "low"):
        for d in os.listdir(layout.queued(prio)):
            names[json.loads((layout.queued(prio) / d / "job.json").read_text())["original_name"]] = prio
    assert names == {"skewed.jsonl": "normal", long_name: "normal", "urgent.jsonl": "high",
                     "later.jsonl": "low", "evil\n2026-12-01 00:00:00 INFO forged.jsonl": "normal"}
    [failed] = os.listdir(layout.failed)
    assert TOO_DEEP in json.loads((layout.failed / failed / ERROR_JSON).read_text())["reason"]
    assert not any(line.startswith("2026-12-01 00:00:00 INFO forged") for line in p.stderr.splitlines())
    assert "evil\\n2026-12-01" in p.stderr

    wide = dict(os.environ, COLUMNS="1000")  # one row per job, not wrapped
    listing = cli("queue", "list", "--base-dir", base, env=wide).stdout
    assert "evil\\n2026" in listing and not any(line.lstrip("│ ").startswith("2026-12-01 00:00:00")
                                                 for line in listing.splitlines())
    st = cli("status", "--base-dir", base, env=wide).stdout
    assert "ignored ..jsonl" in st and "starts with '.'" in st


def _limit_fds(n):
    def set_limit():
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return set_limit


@pytest.mark.slow
def test_with_ulimit_n_64_a_big_drop_is_taken_in_and_trains(tmp_path, tiny_model):
    """1,000 files under a 64-descriptor limit (as `ulimit -n 64`): more than 15 times the
    limit proves that no descriptor is held per file; the 10,000-file figure in
    docs/RELIABILITY.md is the same path, measured once. Then jobs still train under it."""
    import json as _json
    import subprocess

    from tests.conftest import trainerd_cmd

    base = make_base(tmp_path / "b", tiny_model)
    cli("pause", "--base-dir", base)
    line = _json.dumps(chat_rows(1)[0]) + "\n"
    for i in range(1000):
        (base / "inbox" / f"f{i:04d}.jsonl").write_text(line)
    p = subprocess.run([*trainerd_cmd(), "run", "--base-dir", str(base), "--once"], capture_output=True,
                       text=True, timeout=600, preexec_fn=_limit_fds(64))
    assert p.returncode == 4, p.stderr[-3000:]
    layout = Layout.at(base)
    assert len(os.listdir(layout.queued("normal"))) == 1000 and os.listdir(layout.failed) == []
    assert os.listdir(base / "inbox") == []

    # Training under the same limit: a worker and its imports fit in 64 descriptors.
    small = make_base(tmp_path / "small", tiny_model)
    for i in range(2):
        write_jsonl(small / "inbox" / f"t{i}.jsonl", chat_rows(4))
    p = subprocess.run([*trainerd_cmd(), "run", "--base-dir", str(small), "--once"], capture_output=True,
                       text=True, timeout=600, preexec_fn=_limit_fds(64))
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(os.listdir(Layout.at(small).done)) == 2


def test_out_of_descriptors_pauses_intake_with_the_reason_and_rejects_nothing(tmp_path):
    """A real EMFILE: a child lowers its own limit to what it already has open, then ingests."""
    import subprocess
    import sys

    layout = Layout.at(tmp_path)
    layout.ensure()
    for i in range(5):
        write_jsonl(layout.inbox / f"g{i}.jsonl", chat_rows(1))
    code = f"""
import os, resource
from trainerd.config import QueueConfig
from trainerd.paths import Layout
from trainerd.queue import Queue
q = Queue(Layout.at({str(tmp_path)!r}), QueueConfig(settle_seconds=0))
n = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (n, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
taken = q.ingest()
print(len(taken), q.blocked)
assert q.blocked and "out of file descriptors" in q.blocked, q.blocked
assert "ulimit -n" in q.inbox_report()["blocked"]
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
q._retry_at = 0  # an intake cut short mid-way is finished by the retry (every 5 s); now
taken = q.ingest()
assert q.blocked is None and q.counts()["queued"] == 5, (q.counts(), q.blocked)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert os.listdir(layout.failed) == [] and len(os.listdir(layout.queued("normal"))) == 5


def test_a_name_that_is_not_utf8_is_taken_in(q):
    path = q.layout.inbox / os.fsdecode(b"caf\xe9-\x01.jsonl")
    deliver(path, chat_rows(2))
    [ref] = q.ingest()
    assert ref.state == JobState.QUEUED and ref.meta().original_name == path.name
