"""`trainerd init` and `trainerd validate` (trainerd/cli/prepare.py): the long steps show
progress on stderr, and the verdict on stdout."""

from __future__ import annotations

import pytest

from tests.conftest import chat_rows, cli, write_jsonl


@pytest.mark.slow
def test_tiny_model_init_and_validate_show_progress_on_stderr(tmp_path):
    base = tmp_path / "base"
    p = cli("init", "--base-dir", base, "--tiny-model", "--warm-steps", "5")
    assert "warming the tiny model" in p.stderr and "5/5" in p.stderr, p.stderr
    f = write_jsonl(tmp_path / "x.jsonl", chat_rows(3))
    p = cli("validate", str(f), "-b", base)
    assert "tokenizing 1 file(s)" in p.stderr and "trains 3 sequences" in p.stdout, p.stdout + p.stderr
