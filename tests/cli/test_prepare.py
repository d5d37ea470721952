"""`trainerd init` and `trainerd validate` (trainerd/cli/prepare.py): the long steps show
progress on stderr, the verdict is on stdout, and the torch they need stays in children."""

from __future__ import annotations

import pytest

from tests.cli.torchfree import trainerd_watched
from tests.conftest import chat_rows, write_jsonl


@pytest.mark.slow
def test_tiny_model_init_and_validate_show_progress_on_stderr_and_never_load_torch_here(tmp_path):
    """The model is built, and files are tokenized, by the worker's code in children."""
    base = tmp_path / "base"
    p, heavy = trainerd_watched(tmp_path / "init.json", "init", "--base-dir", base, "--tiny-model",
                                "--warm-steps", "5")
    assert p.returncode == 0, p.stderr
    assert "warming the tiny model" in p.stderr and "5/5" in p.stderr, p.stderr
    assert "warmed 5 steps" in p.stdout and (base / "tiny-model" / "config.json").is_file(), p.stdout
    assert heavy == []
    f = write_jsonl(tmp_path / "x.jsonl", chat_rows(3))
    p, heavy = trainerd_watched(tmp_path / "validate.json", "validate", str(f), "-b", base)
    assert p.returncode == 0, p.stderr
    assert "tokenizing 1 file(s)" in p.stderr and "trains 3 sequences" in p.stdout, p.stdout + p.stderr
    assert heavy == []


def test_a_tiny_model_that_cannot_be_written_is_one_sentence_from_the_child(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "tiny-model").write_text("in the way")  # a file where the model's folder goes
    p, heavy = trainerd_watched(tmp_path / "init.json", "init", "--base-dir", base, "--tiny-model",
                                "--warm-steps", "0")
    assert p.returncode == 1
    assert f"error: could not write the tiny model into {base / 'tiny-model'}" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and heavy == []
