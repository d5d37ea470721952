"""The anti-stuck monitor with real workers: one frozen by SIGSTOP, one really hung in its
eval (its probe set is a FIFO nobody writes, as a probe file on a dead network mount
would block), and a model load slower than stall_seconds that is not a stall."""

import json
import os
import signal

import pytest

from tests.conftest import chat_rows, cli, daemon, daemon_log, make_base, wait_for, write_jsonl
from trainerd.paths import Layout
from trainerd.stall import StallWatch

STALL = "[daemon]\nstall_seconds = 3\nstop_grace_seconds = 2\n"


def _job(base):
    layout = Layout.at(base)
    for d in (layout.active, layout.done, layout.failed, *(layout.queued(p) for p in ("high", "normal", "low"))):
        for name in os.listdir(d):
            try:
                return d / name, json.loads((d / name / "job.json").read_text())
            except (OSError, ValueError):
                pass
    return None, None


def _outcomes(base):
    _d, meta = _job(base)
    return [a.get("outcome") for a in meta["attempts"]] if meta else []


def test_the_watch_counts_only_changes_on_its_own_clock(tmp_path):
    clock = [0.0]
    w = StallWatch(tmp_path, 10, clock=lambda: clock[0])
    clock[0] = 9
    assert w.look() is None  # no heartbeat yet: counted from the spawn
    (tmp_path / "heartbeat.json").write_text(json.dumps({"pid": 1, "phase": "loading", "step": 0, "beats": 1}))
    clock[0] = 15
    assert w.look() is None and w.phase == "loading"  # a change resets the clock
    (tmp_path / "heartbeat.json").write_text(json.dumps({"pid": 1, "phase": "loading", "step": 0, "beats": 1,
                                                        "at": 1e12}))  # a rewrite is not progress
    clock[0] = 26
    assert w.look() == "stalled at step 0 in loading for 11 s (daemon.stall_seconds = 10)"


@pytest.mark.slow
def test_a_frozen_worker_is_stopped_killed_counted_and_resumed(tmp_path, tiny_model):
    # 200 steps of one example, a checkpoint every 20: long enough to be caught mid-training.
    base = make_base(tmp_path / "b", tiny_model, STALL + "[queue]\nmax_attempts = 3\n"
                     "[train]\nmicro_batch_size = 1\n[checkpoint]\nevery_steps = 20\n")
    write_jsonl(base / "inbox" / "f.jsonl", chat_rows(200, "frozen"))
    with daemon(base, "--once") as d:
        def checkpointed_worker():
            job_dir, meta = _job(base)
            if job_dir is None or not meta["attempts"] or not (job_dir / "checkpoints").is_dir():
                return None
            hb = json.loads((job_dir / "heartbeat.json").read_text()) if (job_dir / "heartbeat.json").exists() else {}
            steps = [p for p in os.listdir(job_dir / "checkpoints") if p.startswith("step-")]
            return meta["attempts"][-1]["pid"] if steps and hb.get("phase") in ("training", "checkpointing") \
                else None

        pid = wait_for(checkpointed_worker, 240, what="a worker training with a checkpoint")
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: "stalled" in _outcomes(base), 120, what="the stall to be recorded")
        assert d.wait(timeout=300) == 0, daemon_log(base)
    job_dir, meta = _job(base)
    assert job_dir.parent.name == "done", daemon_log(base)
    first, second = meta["attempts"][0], meta["attempts"][1]
    assert first["outcome"] == "stalled"
    assert first["error"].startswith("stalled at step ")
    assert " in training for " in first["error"] or " in checkpointing for " in first["error"]
    assert "SIGKILL" in first["error"]  # a stopped process ignores the warm stop; the kill ends it
    assert second["outcome"] == "finished"
    assert "resuming from step-" in (job_dir / "worker.log").read_text()
    assert meta["examples_done"] == 200


@pytest.mark.slow
def test_a_hung_eval_is_a_stall_and_counts_until_the_job_fails(tmp_path, tiny_model):
    base = make_base(tmp_path / "b", tiny_model, STALL + "[queue]\nmax_attempts = 2\n")
    os.mkfifo(base / "probe.jsonl")  # opened for reading, it blocks until a writer comes: never
    write_jsonl(base / "inbox" / "h.jsonl", chat_rows(8, "hang"))
    with daemon(base, "--once") as d:
        # status shows the phase the worker is stuck in, while it is stuck there
        wait_for(lambda: "phase eval" in cli("status", "--base-dir", base).stdout, 240, interval=0.3,
                 what="status to show the worker in its eval")
        assert d.wait(timeout=300) == 0, daemon_log(base)
    job_dir, meta = _job(base)
    assert job_dir.parent.name == "failed"
    assert [a["outcome"] for a in meta["attempts"]] == ["stalled", "stalled"]
    assert all(a["error"].startswith("stalled at step 0 in eval for ") for a in meta["attempts"])
    reason = json.loads((job_dir / "error.json").read_text())["reason"]
    assert "gave up after 2 failed attempt(s)" in reason and "in eval" in reason


@pytest.mark.slow
def test_a_load_slower_than_stall_seconds_is_not_a_stall(tmp_path, tiny_model):
    """stall_seconds = 2: importing torch and transformers and loading the model take
    longer than that, all in the worker's loading phase, and the job still finishes."""
    base = make_base(tmp_path / "b", tiny_model, "[daemon]\nstall_seconds = 2\n")
    write_jsonl(base / "inbox" / "s.jsonl", chat_rows(8, "slow"))
    cli("run", "--base-dir", base, "--once", timeout=300)
    job_dir, meta = _job(base)
    assert [a["outcome"] for a in meta["attempts"]] == ["finished"], daemon_log(base)
    hb = json.loads((job_dir / "heartbeat.json").read_text())
    if hb["phase_seconds"].get("loading", 0) <= 2:
        pytest.skip("this machine loaded the model within stall_seconds: nothing was proved")
