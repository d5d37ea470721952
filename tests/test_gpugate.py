"""run/gpu.lock: a generation and a training worker never hold the GPU together."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import chat_rows, cli, daemon, daemon_log, wait_for, write_jsonl
from trainerd.gpugate import GpuBusy, TrainingHold, generation_hold
from trainerd.paths import Layout


def test_training_and_generations_exclude_each_other(tmp_path):
    layout = Layout.at(tmp_path)
    training = TrainingHold(layout)
    assert training.acquire("the daemon (pid 1) is training")
    with pytest.raises(GpuBusy, match=r"pid 1\) is training.*--device cpu"), generation_hold(layout):
        pass
    training.release()
    with generation_hold(layout), generation_hold(layout):  # generations may share the GPU
        assert not TrainingHold(layout).acquire("x")  # ... but a job waits for them
    assert training.acquire("x")
    training.release()


@pytest.mark.slow
def test_a_job_waits_for_a_generation_on_the_gpu_then_trains(base):
    layout = Layout.at(base)
    write_jsonl(base / "inbox" / "a.jsonl", chat_rows(8))
    gen = generation_hold(layout)
    gen.__enter__()  # what `trainerd generate` on a GPU holds while it answers
    try:
        with daemon(base, "--once") as d:
            def idle_with_a_queued_job() -> bool:
                try:
                    s = json.loads(layout.status.read_text())
                except (OSError, ValueError):
                    return False
                return s["state"] == "idle" and s["queue"]["queued"] == 1
            wait_for(idle_with_a_queued_job, timeout=120, what=f"an idle daemon\n{daemon_log(base)}")
            assert os.listdir(layout.active) == []
            gen.__exit__(None, None, None)
            gen = None
            assert d.wait(timeout=300) == 0, daemon_log(base)
    finally:
        if gen is not None:
            gen.__exit__(None, None, None)
    assert len(os.listdir(layout.done)) == 1
    assert "v0001" in cli("models", "list", "--base-dir", base).stdout
