"""`trainerd generate / chat / compare` against the real tiny model, as real processes."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import cli

Q = "Say the one code number 3."


def _words(s: str) -> list[str]:
    return s.split()


@pytest.mark.slow
def test_generate_answers_each_prompt_greedily_with_the_chat_template(trained_line, tmp_path):
    base = trained_line["base"]
    args = ("generate", "--base-dir", base, "--version", "v0001", "--max-new-tokens", "8")
    # The prompt is rendered as a conversation: a chat line asking the same (its assistant
    # turn is the expected answer, not part of the prompt) and the same text on a line of
    # its own get the same answer as the argument.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": Q},
                                                {"role": "assistant", "content": "expected"}]}) + "\n"
                       + Q + "\n")
    rows = [json.loads(x) for x in cli(*args, "--json", "--file", prompts, Q, "hello there").stdout.splitlines()]
    assert [r["version"] for r in rows] == ["v0001"] * 4
    assert all(1 <= r["tokens"] <= 8 and r["answer"] for r in rows)
    assert rows[0]["answer"] == rows[2]["answer"] == rows[3]["answer"]
    # Streamed text is the same answers: greedy, the same in every process.
    streamed = cli(*args, Q, "hello there").stdout
    assert _words(streamed) == _words(rows[0]["answer"] + " " + rows[1]["answer"])


@pytest.mark.slow
def test_chat_in_a_pipe_keeps_the_conversation_resets_and_exits_at_eof(trained_line):
    base = trained_line["base"]
    first = json.loads(cli("generate", "--base-dir", base, "--version", "v0001", "--json",
                           "--max-new-tokens", "6", Q).stdout)["answer"]
    p = cli("chat", "v0001", "--base-dir", base, "--max-new-tokens", "6",
            input=f"{Q}\n/reset\n{Q}\n/version v0002\n{Q}\n")
    out = p.stdout
    assert _words(out)[: len(_words(first))] == _words(first)  # the first turn, as `generate` answers
    half = len(_words(first))
    assert _words(out)[half: 2 * half] == _words(first)  # after /reset: the same conversation again
    assert "[conversation cleared]" in p.stderr and "[v0002 (adapter) on cpu]" in p.stderr


@pytest.mark.slow
def test_compare_two_versions_per_example_probe_loss_and_answers(trained_line):
    base = trained_line["base"]
    r = json.loads(cli("compare", "v0001", "v0002", "--base-dir", base, "--json", "--max-new-tokens", "6").stdout)
    assert (r["a"], r["b"]) == ("v0001", "v0002")
    p = r["probe"]
    assert [row["line"] for row in p["rows"]] == [1, 2, 3, 4] and p["examples"] == 4
    assert set(p["better"]) | set(p["worse"]) <= {1, 2, 3, 4}
    assert p["better"] == [row["line"] for row in p["rows"] if row["change"] == "better"]
    # The loss is the probe eval's own: v0002's total equals the final eval of the job that made it.
    two = next(d for d in (base / "jobs" / "done").iterdir() if d.name.endswith("two"))
    final = [json.loads(x) for x in (two / "evals.jsonl").read_text().splitlines()][-1]
    assert p["total"]["b"] == pytest.approx(final["loss"], rel=1e-4)
    assert len(r["answers"]) == 4 and all(a["expected"] and a["a"] and a["b"] for a in r["answers"])

    for row in p["rows"]:
        assert row["delta"] == pytest.approx(row["b"] - row["a"])
        assert row["change"] == ("same" if abs(row["delta"]) <= r["rtol"] * row["a"] else
                                 "better" if row["delta"] < 0 else "worse")

    from io import StringIO

    from rich.console import Console

    from trainerd.ask import print_compare

    buf = StringIO()
    print_compare(Console(file=buf, width=200), r)
    text = buf.getvalue()
    assert "total (token-weighted): v0001" in text and "probe loss per example" in text


@pytest.mark.parametrize("wanted", ["auto", "cuda"])
def test_on_a_gpu_that_is_training_a_generation_is_refused_with_the_reason(tmp_path, monkeypatch, wanted):
    """No CUDA here: torch is told it has one, the daemon's side of the gate is held."""
    import torch

    from trainerd.gpugate import GpuBusy, TrainingHold
    from trainerd.paths import Layout
    from trainerd.worker.asker import device_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    niced: list[int] = []
    monkeypatch.setattr(os, "nice", niced.append)  # not this test process for real
    layout = Layout.at(tmp_path)
    hold = TrainingHold(layout)
    assert hold.acquire("the daemon (pid 7) is training")
    try:
        with pytest.raises(GpuBusy, match=r"pid 7\) is training.*--device cpu"), device_for(layout, wanted):
            pass
        with device_for(layout, "cpu") as device:  # the way around it, at a lower priority
            assert device == "cpu" and niced == [10]
    finally:
        hold.release()
    with device_for(layout, wanted) as device:  # idle: the GPU is free to use
        assert device == "cuda"
