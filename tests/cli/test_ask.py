"""`trainerd generate / chat / compare` (trainerd/cli/ask.py) as a person runs them: the
model loads in the child (trainerd.worker.generate), never in this process, and a wrong
version or device is refused before any model loads. What the answers are is
tests/worker/test_generate.py's."""

from __future__ import annotations

import json

import pytest

from tests.cli.torchfree import trainerd_watched
from tests.conftest import cli

Q = "Say the one code number 3."


@pytest.mark.slow
def test_generate_chat_and_compare_never_load_torch_in_the_cli_process(trained_line, tmp_path):
    base = trained_line["base"]
    p, heavy = trainerd_watched(tmp_path / "generate.json", "generate", "--base-dir", base, "--json",
                                "--max-new-tokens", "2", Q)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["version"] == "v0002" and heavy == []
    p, heavy = trainerd_watched(tmp_path / "chat.json", "chat", "v0001", "--base-dir", base,
                                "--max-new-tokens", "2", input=f"{Q}\n")
    assert p.returncode == 0, p.stderr
    assert "[v0001 (adapter) on cpu]" in p.stderr and p.stdout.strip() and heavy == []
    p, heavy = trainerd_watched(tmp_path / "compare.json", "compare", "v0001", "v0002", "--base-dir", base,
                                "--json", "--max-new-tokens", "2")
    assert p.returncode == 0, p.stderr
    assert (json.loads(p.stdout)["a"], json.loads(p.stdout)["b"]) == ("v0001", "v0002") and heavy == []


@pytest.mark.slow
@pytest.mark.parametrize("args, code, says", [
    (["generate", "--version", "v0042", "hi"], 2, "models list"),
    (["chat", "v0042"], 2, "models list"),
    (["compare", "v0001", "/no/such/folder"], 2, "not a version"),
    (["generate", "--device", "tpu", "hi"], 1, "--device tpu: expected auto, cpu or cuda"),
])
def test_a_bad_version_or_device_is_refused_before_any_model_loads(trained_line, args, code, says):
    p = cli(*args, "--base-dir", trained_line["base"], check=False, timeout=120)
    assert p.returncode == code and "error:" in p.stderr and says in p.stderr, p.stderr
    assert " on cpu]" not in p.stderr  # the child's "[vNNNN (kind) on DEVICE]": no model loaded
