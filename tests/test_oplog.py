"""The daemon's log as an operator meets it: rotated, reopened on SIGHUP, JSON records
with the job they are about, one line per publish, refusals of unknown formats."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import pytest

from tests.conftest import chat_rows, cli, daemon, make_base, wait_for, write_jsonl
from trainerd import oplog
from trainerd.config import QueueConfig
from trainerd.jobs import WORKER_LOG, Priority
from trainerd.paths import Layout
from trainerd.queue import Queue

JOB = "20260101T000000-000001-a.jsonl"


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    for h in root.handlers:
        if h not in saved[0]:
            h.close()
    root.handlers[:], root.level = saved


def test_file_rotates_by_size(tmp_path, monkeypatch, restore_logging):
    monkeypatch.setattr(oplog, "LOG_MAX_BYTES", 2000)
    monkeypatch.setattr(oplog, "LOG_BACKUPS", 2)
    path = oplog.setup(tmp_path / "logs", "text", False)
    log = logging.getLogger("trainerd.test")
    for i in range(200):
        log.info("line %d %s", i, "x" * 50)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["trainerd.log", "trainerd.log.1", "trainerd.log.2"], files  # older ones dropped
    assert all(p.stat().st_size <= 2000 + 200 for p in path.parent.iterdir())


def test_json_records_carry_job_attempt_version(tmp_path, restore_logging):
    path = oplog.setup(tmp_path / "logs", "json", False)
    log = logging.getLogger("trainerd.supervisor")
    log.warning("%s: attempt failed (%s)", JOB, "boom")  # job id read off the message
    log.info("%s", "published v0012 ...", extra={"job_id": JOB, "attempt": 2, "version": "v0012"})
    log.info("no job here: %s", JOB)  # not at the start: not claimed as the record's job
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["job_id"] == JOB and "attempt" not in rows[0] and rows[0]["level"] == "WARNING"
    assert (rows[1]["job_id"], rows[1]["attempt"], rows[1]["version"]) == (JOB, 2, "v0012")
    assert "job_id" not in rows[2]


def test_publish_line():
    facts = {"version": "v0012", "first_loss": 2.3141, "last_loss": 1.8702, "examples_done": 120, "steps": 30,
             "train_seconds": 35.2, "dropped": 2, "truncated": 0}
    line = oplog.publish_line(JOB, "a.jsonl", facts, {"loss": 1.5, "exact_match": 0.4})
    assert line == (f"published v0012 from a.jsonl ({JOB}): loss 2.31 -> 1.87; 120 examples, 30 steps in 35s; "
                    "2 dropped; probe loss 1.5, exact match 0.4")


def test_unknown_log_format_is_refused(tmp_path):
    base = make_base(tmp_path / "base", "unused-model")
    p = cli("run", "--base-dir", base, "--log-format", "xml", check=False, timeout=60)
    assert p.returncode == 2 and "--log-format must be one of text, json, not 'xml'" in p.stderr


def test_sighup_reopens_the_log_after_logrotate_moved_it(tmp_path, tiny_model):
    base = make_base(tmp_path / "base", tiny_model)  # a daemon starts only on a model that loads
    log = Layout.at(base).logs / oplog.LOG_FILE
    with daemon(base) as d:
        wait_for(lambda: log.exists() and "trainerd running" in log.read_text(), timeout=60, what="daemon log")
        log.rename(log.with_name("trainerd.log.old"))  # what logrotate does
        d.send_signal(signal.SIGHUP)
        wait_for(lambda: log.exists() and "SIGHUP: config reloaded" in log.read_text(), timeout=60,
                 what="a new trainerd.log after SIGHUP")
        d.send_signal(signal.SIGTERM)
        assert d.wait(60) == 0
    assert "SIGHUP" not in log.with_name("trainerd.log.old").read_text()


def test_queue_show_points_at_worker_log_and_prints_its_tail(tmp_path):
    base = make_base(tmp_path / "base", "unused-model")
    layout = Layout.at(base)
    ref = Queue(layout, QueueConfig()).submit(write_jsonl(tmp_path / "a.jsonl", chat_rows(3)), Priority.NORMAL)
    (ref.path / WORKER_LOG).write_text("".join(f"worker line {i}\n" for i in range(100)))
    p = cli("queue", "show", ref.id, "--base-dir", base)
    shown = json.loads(p.stdout)
    assert shown["worker_log"] == str(ref.path / WORKER_LOG)
    assert "worker line 99" in p.stderr and "worker line 80" in p.stderr and "worker line 79" not in p.stderr


def test_tail_reads_only_the_end(tmp_path):
    f = tmp_path / "big.log"
    f.write_text("a\n" * 100_000 + "last\n")
    assert oplog.tail(f, lines=2, max_bytes=100) == "a\nlast"
    assert oplog.tail(Path(tmp_path / "missing")) is None
