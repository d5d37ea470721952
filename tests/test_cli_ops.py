"""The command line as an operator meets it: --version, shell completion, ids that
`queue list` prints and show/move/remove accept, progress on long commands, help text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd import __version__
from trainerd.config import QueueConfig
from trainerd.jobs import Priority
from trainerd.paths import Layout
from trainerd.queue import Queue

ENTRY = Path(sys.executable).parent / "trainerd"  # the installed console script


def test_version_completion_and_gc_help():
    assert cli("--version").stdout.strip() == f"trainerd {__version__}"
    helptext = cli("--help").stdout
    assert "--install-completion" in helptext and "--show-completion" in helptext
    p = subprocess.run([str(ENTRY), "--show-completion", "bash"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, COLUMNS="200"))
    assert p.returncode == 0 and "_TRAINERD_COMPLETE" in p.stdout, p.stdout + p.stderr
    assert "Apply [retention]:" in cli("gc", "--help", env=dict(os.environ, COLUMNS="200")).stdout


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


@pytest.mark.slow
def test_tiny_model_init_and_validate_show_progress_on_stderr(tmp_path):
    base = tmp_path / "base"
    p = cli("init", "--base-dir", base, "--tiny-model", "--warm-steps", "5")
    assert "warming the tiny model" in p.stderr and "5/5" in p.stderr, p.stderr
    f = write_jsonl(tmp_path / "x.jsonl", chat_rows(3))
    p = cli("validate", str(f), "-b", base)
    assert "tokenizing 1 file(s)" in p.stderr and "trains 3 sequences" in p.stdout, p.stdout + p.stderr
