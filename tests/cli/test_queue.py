"""`trainerd queue ...` (trainerd/cli/queue.py): the ids `queue list` prints are what
show/move/remove accept, as are unique prefixes and the original file name."""

from __future__ import annotations

import json
import os

from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd.config import QueueConfig
from trainerd.jobs import Priority
from trainerd.paths import Layout
from trainerd.queue import Queue


def test_queue_list_ids_are_what_show_move_remove_accept(tmp_path):
    base = make_base(tmp_path / "base", "unused-model")
    q = Queue(Layout.at(base), QueueConfig())
    a = q.submit(write_jsonl(tmp_path / "a-rather-long-file-name-for-a-table.jsonl", chat_rows(2)), Priority.LOW)
    b = q.submit(write_jsonl(tmp_path / "second.jsonl", chat_rows(2)), Priority.LOW)
    listed = cli("queue", "list", "--base-dir", base, env=dict(os.environ, COLUMNS="80")).stdout
    assert a.id in listed.replace("\n", "").replace("│", "").replace(" ", "") and b.id in listed
    # A unique prefix, and the original file name, name the job.
    shown = json.loads(cli("queue", "show", a.id[:24], "--base-dir", base).stdout)
    assert shown["job"]["id"] == a.id
    cli("queue", "move", "second.jsonl", "-p", "high", "--base-dir", base)
    assert Queue(Layout.at(base), QueueConfig()).find(b.id).priority == Priority.HIGH
    p = cli("queue", "remove", a.id[:9], "--base-dir", base, check=False)  # both start with the date
    assert p.returncode == 1 and "give more of the id" in p.stderr
    p = cli("queue", "remove", "nothing-like-it", "--base-dir", base, check=False)
    assert p.returncode == 1 and "queue list --state all" in p.stderr
    cli("queue", "remove", "a-rather-long-file-name-for-a-table.jsonl", "--base-dir", base)
    assert [r.id for r in Queue(Layout.at(base), QueueConfig()).list()] == [b.id]
