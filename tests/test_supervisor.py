"""The daemon under real signals, pauses, stops, skips and kills (real processes, real model).

The equality checks compare the final adapter of an interrupted job with that of the same
job trained without interruption in another base dir: same data and seed give the same
data order, so any lost or repeated step would show up as a weight difference.
"""

import contextlib
import json
import os
import signal
import sys
import time

import pytest

from tests.conftest import (
    chat_rows,
    cli,
    daemon,
    daemon_log,
    gone,
    make_base,
    start_daemon,
    wait_for,
    write_jsonl,
)
from trainerd.paths import Layout

pytestmark = pytest.mark.slow

# 96 examples / micro-batch 2 = 48 steps; checkpoints every 4 steps.
SLOW_JOB = "[train]\nmicro_batch_size = 2\n"


def rows():
    return chat_rows(96, "kappa")


def progress(base):
    for d in Layout.at(base).active.iterdir():
        try:
            return json.loads((d / "progress.json").read_text())
        except (OSError, ValueError):
            return None
    return None


def active_dir(base):
    [d] = list(Layout.at(base).active.iterdir())
    return d


def final_adapter(base):
    from safetensors.torch import load_file

    return load_file(str(Layout.at(base).current_model / "adapter_model.safetensors"))


def assert_same_weights(a, b):
    import torch

    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model):
    """The uninterrupted run every interrupted one must equal."""
    base = make_base(tmp_path_factory.mktemp("ref") / "b", tiny_model, SLOW_JOB)
    write_jsonl(base / "inbox" / "k.jsonl", rows())
    cli("run", "--base-dir", base, "--once")
    [job] = os.listdir(Layout.at(base).done)
    meta = json.loads((Layout.at(base).done / job / "job.json").read_text())
    return final_adapter(base), meta


@contextlib.contextmanager
def frozen_worker(base):
    """The active job's worker held with SIGSTOP while a test asks the daemon to stop it:
    on a busy machine the steps left could otherwise all run before the daemon looks (CI
    saw it). The daemon's SIGTERM stays pending until SIGCONT; the worker then stops at a
    step. Yields `asked(reason)`, which waits for the daemon's log to say it asked."""
    worker = json.loads((active_dir(base) / "job.json").read_text())["attempts"][-1]["pid"]
    os.kill(worker, signal.SIGSTOP)

    def asked(reason: str) -> None:
        wait_for(lambda: f"checkpoint and stop ({reason})" in daemon_log(base), what=f"the daemon to ask: {reason}")

    try:
        yield asked
    finally:
        os.kill(worker, signal.SIGCONT)


def finished_meta(base):
    [job] = os.listdir(Layout.at(base).done)
    return json.loads((Layout.at(base).done / job / "job.json").read_text())


def test_pause_checkpoints_at_a_step_and_resume_equals_uninterrupted(tmp_path, tiny_model, reference):
    base = make_base(tmp_path / "b", tiny_model, SLOW_JOB)
    write_jsonl(base / "inbox" / "k.jsonl", rows())
    with daemon(base) as d:
        wait_for(lambda: (progress(base) or {}).get("step", 0) >= 6, what="step 6")
        with frozen_worker(base) as asked:
            cli("pause", "--base-dir", base, "--reason", "test")
            asked("paused")
        job = active_dir(base)
        wait_for(lambda: json.loads((job / "job.json").read_text())["attempts"][-1].get("outcome") == "stopped",
                 what="worker stopped")
        meta = json.loads((job / "job.json").read_text())
        step = meta["steps_done"]
        assert 6 <= step < 48
        ckpts = sorted(os.listdir(job / "checkpoints"))
        assert f"step-{step:06d}" in ckpts  # the pause itself checkpointed: 0 steps lost
        s = wait_for(lambda: (lambda s: s if s["daemon"].get("state") == "paused" else None)(
            json.loads(cli("status", "--base-dir", base, "--json").stdout)), what="status paused")
        assert s["daemon"]["running"] and s["daemon"]["responding"]
        assert s["desired"]["state"] == "paused" and len(s["active"]) == 1
        time.sleep(1.0)
        assert d.poll() is None and json.loads((job / "job.json").read_text())["attempts"][-1]["outcome"] == "stopped"

        cli("resume", "--base-dir", base)
        wait_for(lambda: os.listdir(Layout.at(base).done), what="job done")
        cli("stop", "--base-dir", base)
        assert d.wait(60) == 0
    meta = finished_meta(base)
    assert [a["outcome"] for a in meta["attempts"]] == ["stopped", "finished"]
    assert meta["steps_done"] == reference[1]["steps_done"] == 48
    assert meta["examples_done"] == reference[1]["examples_done"] == 96
    # The resumed attempt started at the step after the pause: its first logged step.
    rows_ = [json.loads(x) for x in (Layout.at(base).done / meta["id"] / "metrics.jsonl").read_text().splitlines()]
    assert min(r["step"] for r in rows_ if r["attempt"] == 2) == step + 1
    assert_same_weights(final_adapter(base), reference[0])
    # The pause's worker exit was asked for: nothing about it is a WARNING (or worse).
    loud = [line for line in (Layout.at(base).logs / "trainerd.log").read_text().splitlines()
            if " WARNING " in line or " ERROR " in line]
    assert not loud, loud


def test_sigkill_of_the_worker_twice_at_random_steps_resumes_exactly(tmp_path, tiny_model, reference):
    """Two SIGKILLs at random steps (after at least one checkpoint), plus a half-written
    checkpoint as a kill during a save leaves it: the result equals the uninterrupted run."""
    import random

    seed = int(os.environ.get("TRAINERD_TEST_SEED", time.time()))
    rng = random.Random(seed)
    kills = sorted(rng.sample(range(5, 40), 2))
    base = make_base(tmp_path / "b", tiny_model, SLOW_JOB)
    write_jsonl(base / "inbox" / "k.jsonl", rows())
    with daemon(base) as d:
        for n, at in enumerate(kills, start=1):
            p = wait_for(lambda at=at, n=n: (lambda x: x if x and x.get("attempt") == n and x.get("step", 0) >= at
                                             else None)(progress(base)), what=f"step {at} (seed {seed})")
            job = active_dir(base)
            os.kill(p["pid"], signal.SIGKILL)
            if n == 1:  # as if the kill had landed mid-save: no manifest, and Trainer's own temp
                fake = job / "checkpoints" / "step-000044"
                fake.mkdir(parents=True)
                (fake / "adapter_model.safetensors").write_bytes(b"\0" * 100)
                (job / "checkpoints" / ".staging" / "checkpoint-45").mkdir(parents=True, exist_ok=True)
        wait_for(lambda: os.listdir(Layout.at(base).done), what="job done")
        cli("stop", "--base-dir", base)
        assert d.wait(60) == 0
    meta = finished_meta(base)
    assert [a["outcome"] for a in meta["attempts"]] == ["crashed", "crashed", "finished"], seed
    assert "SIGKILL" in meta["attempts"][0]["error"]
    assert meta["steps_done"] == 48 and meta["examples_done"] == 96
    log = (Layout.at(base).done / meta["id"] / "worker.log").read_text()
    assert "step-000044 is not usable" in log and "half-written" in log
    assert_same_weights(final_adapter(base), reference[0])


def test_stop_exits_0_keeps_the_job_active_and_next_start_resumes(tmp_path, tiny_model, reference):
    base = make_base(tmp_path / "b", tiny_model, SLOW_JOB)
    write_jsonl(base / "inbox" / "k.jsonl", rows())
    d = start_daemon(base)
    wait_for(lambda: (progress(base) or {}).get("step", 0) >= 3, what="step 3")
    (base / ".stop").touch()  # the original daemon's switch, an alias of `trainerd stop`
    assert d.wait(60) == 0, daemon_log(base)
    assert not (base / ".stop").exists()
    job = active_dir(base)
    meta = json.loads((job / "job.json").read_text())
    assert meta["attempts"][-1]["outcome"] == "stopped"
    assert f"step-{meta['steps_done']:06d}" in os.listdir(job / "checkpoints")
    s = json.loads(cli("status", "--base-dir", base, "--json").stdout)
    assert s["daemon"]["running"] is False

    cli("run", "--base-dir", base, "--once")
    meta = finished_meta(base)
    assert [a["outcome"] for a in meta["attempts"]] == ["stopped", "finished"]
    assert_same_weights(final_adapter(base), reference[0])


def test_sigterm_warm_then_cold_and_kill9_recovery(tmp_path, tiny_model, reference):
    base = make_base(tmp_path / "b", tiny_model, SLOW_JOB)
    write_jsonl(base / "inbox" / "k.jsonl", rows())
    # Warm: one SIGTERM -> checkpoint at the next step, exit 0.
    d = start_daemon(base)
    wait_for(lambda: (progress(base) or {}).get("step", 0) >= 2, what="step 2")
    d.send_signal(signal.SIGTERM)
    assert d.wait(60) == 0, daemon_log(base)
    job = active_dir(base)
    assert json.loads((job / "job.json").read_text())["attempts"][-1]["outcome"] == "stopped"

    # Cold: two SIGTERMs -> worker killed without a checkpoint, prompt exit.
    d = start_daemon(base)
    wait_for(lambda: (progress(base) or {}).get("attempt") == 2, what="second attempt training")
    d.send_signal(signal.SIGTERM)
    # Standard signals are not queued: two sent back to back can arrive as one.
    wait_for(lambda: daemon_log(base).count("asking the worker to checkpoint") == 2, what="first signal seen")
    d.send_signal(signal.SIGTERM)
    assert d.wait(30) == 0
    a = json.loads((job / "job.json").read_text())["attempts"][-1]
    assert a["outcome"] == "stopped" and "cold stop" in a["error"]

    # kill -9 of the daemon: the worker dies with it, status says not running, restart recovers.
    d = start_daemon(base)
    p = wait_for(lambda: (lambda x: x if x and x.get("attempt") == 3 else None)(progress(base)), what="attempt 3")
    d.kill()
    d.wait()
    wait_for(lambda: gone(p["pid"]), what="worker gone with its daemon", timeout=20)
    s = json.loads(cli("status", "--base-dir", base, "--json").stdout)
    assert s["daemon"]["running"] is False
    cli("run", "--base-dir", base, "--once")
    meta = finished_meta(base)
    assert [a["outcome"] for a in meta["attempts"]] == ["stopped", "stopped", "interrupted", "finished"]
    assert_same_weights(final_adapter(base), reference[0])


def test_skip_hits_only_the_job_that_was_active(tmp_path, tiny_model):
    base = make_base(tmp_path / "b", tiny_model, SLOW_JOB)
    write_jsonl(base / "inbox" / "a.jsonl", rows())
    with daemon(base) as d:
        wait_for(lambda: (progress(base) or {}).get("step", 0) >= 2, what="step 2")
        with frozen_worker(base) as asked:
            cli("skip", "--base-dir", base, "--reason", "wrong file")
            asked("skip")
        write_jsonl(base / "inbox" / "b.jsonl", chat_rows(8))
        wait_for(lambda: len(os.listdir(Layout.at(base).done)) == 1, what="second job done")
        cli("stop", "--base-dir", base)
        assert d.wait(60) == 0
    layout = Layout.at(base)
    [failed] = os.listdir(layout.failed)
    assert failed.endswith("-a")
    err = json.loads((layout.failed / failed / "error.json").read_text())
    assert err["reason"] == "skipped by user: wrong file"
    [done] = os.listdir(layout.done)
    assert done.endswith("-b")
    assert not (layout.control / "skip.json").exists()
    # requeue-able: the skipped job trains when requeued
    cli("queue", "requeue", failed, "--base-dir", base)
    cli("run", "--base-dir", base, "--once")
    assert len(os.listdir(layout.done)) == 2


def _supervisor_with_worker(tmp_path, exit_code: int):
    """A real Supervisor (no lock, no loop) whose worker is a process that exits at once."""
    from trainerd.config import load_config
    from trainerd.supervisor import Supervisor

    base = make_base(tmp_path / "b", "unused-model")
    layout = Layout.at(base)
    sup = Supervisor(layout, load_config(layout.config),
                     worker_cmd=[sys.executable, "-c", f"import sys; sys.exit({exit_code})"])
    sup.queue.submit(write_jsonl(tmp_path / "d.jsonl", chat_rows(2)))
    return sup


def _enospc():
    import errno

    return OSError(errno.ENOSPC, "No space left on device")


def test_an_attempt_end_the_disk_could_not_record_is_recorded_at_the_next_tick(tmp_path, monkeypatch):
    """Found by the full-disk campaign (tests/chaos/disk.py): job.json could not be written
    when a worker exited, the daemon forgot the attempt anyway, and the job kept an attempt
    with no outcome forever (7 of 17 attempts in one run)."""
    from trainerd import control
    from trainerd.jobs import JobState, Outcome

    sup = _supervisor_with_worker(tmp_path, 4)  # a data error: the job must end in failed/
    sup._spawn(sup.queue.claim())
    sup.running.proc.wait()
    real, calls = sup.queue.record_attempt_end, []

    def full_once(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise _enospc()
        return real(*a, **kw)

    monkeypatch.setattr(sup.queue, "record_attempt_end", full_once)
    wish = control.read_wish(sup.layout)
    with pytest.raises(OSError):
        sup._watch_worker(wish, False, False)  # the loop logs it and backs off
    assert sup.running is not None  # still watched: nothing forgotten
    sup._watch_worker(wish, False, False)
    assert sup.running is None
    [ref] = sup.queue.list()
    assert ref.state == JobState.FAILED
    assert [a.outcome for a in ref.meta().attempts] == [Outcome.DATA_ERROR]


def test_a_spawned_worker_is_watched_even_if_its_pid_cannot_be_written(tmp_path, monkeypatch):
    """Same campaign: had the second job.json write of a spawn failed, the worker ran on
    unwatched while the next tick started another attempt of the same job."""
    from trainerd import queue

    sup = _supervisor_with_worker(tmp_path, 0)
    ref = sup.queue.claim()
    real, calls = queue.save_meta, []

    def full_on_second(job_dir, meta, sync=True):
        calls.append(1)
        if len(calls) == 2:  # the first save records the attempt; the second, its pid
            raise _enospc()
        return real(job_dir, meta, sync)

    monkeypatch.setattr(queue, "save_meta", full_on_second)
    sup._spawn(ref)  # no exception
    assert sup.running is not None and sup.running.ref.id == ref.id
    assert sup.running.proc.wait(30) == 0


def test_a_skip_that_lands_after_the_worker_published_does_not_fail_the_job(tmp_path):
    """Found by the soak (tests/chaos/soak.py, seed 424242): a skip's SIGTERM reached a
    worker that had just published v0042 and was exiting; it died by SIGTERM, the daemon
    took that for "stopped while starting" and sent the job to failed/ as skipped, though
    its examples were in the model line (a requeue would have trained them twice)."""
    import time

    from trainerd import atomic, control
    from trainerd.jobs import JobState
    from trainerd.line.refs import set_current

    sup = _supervisor_with_worker(tmp_path, 0)
    sup.worker_cmd = [sys.executable, "-c", "import time; time.sleep(60)"]  # no handler: dies by SIGTERM
    ref = sup.queue.claim()
    sup._spawn(ref)
    v = sup.layout.models / "v0001"  # what the worker published just before the signal
    v.mkdir()
    (v / "adapter_model.safetensors").write_bytes(b"w")
    atomic.write_manifest(v, {"version": "v0001", "parent": "base", "kind": "adapter", "base": "x",
                              "jobs": [{"id": ref.id}], "created_at": time.time()})
    set_current(sup.layout, "v0001")
    control.request_skip(sup.layout, ref.id, None)
    wish = control.read_wish(sup.layout)
    sup._watch_worker(wish, False, False)  # sends the stop for the skip
    assert sup.running.proc.wait(30) == -signal.SIGTERM
    sup._watch_worker(wish, False, False)
    [done] = sup.queue.list()
    assert done.state == JobState.DONE, done
    assert done.meta().attempts[-1].outcome.value == "finished"


def test_a_higher_priority_job_preempts_at_a_step_and_the_preempted_one_resumes_exactly_held(
        tmp_path, tiny_model, reference):
    """queue.preempt (issue 16): a high-priority job stops the running normal one at its next
    step; that one goes back first in its queue (not an attempt), the high one trains and
    becomes v0001; the preempted one then resumes from its checkpoint on the version it
    trained from (base), its weights equal its uninterrupted run's, and it is published
    held, since v0001 became current meanwhile; `models rollback --force` makes it current."""
    base = make_base(tmp_path / "b", tiny_model, SLOW_JOB + "[queue]\npreempt = true\n")
    layout = Layout.at(base)
    write_jsonl(base / "inbox" / "k.jsonl", rows())
    with daemon(base) as d:
        wait_for(lambda: (progress(base) or {}).get("step", 0) >= 6, what="step 6")
        with frozen_worker(base) as asked:
            urgent = write_jsonl(tmp_path / "urgent.jsonl", chat_rows(8, "urgent"))
            out = cli("queue", "add", urgent, "--priority", "high", "--base-dir", base).stdout
            high = out.split("queued ", 1)[1].split()[0]
            asked(f"preempted by {high}")
        wait_for(lambda: len(os.listdir(layout.done)) == 2, what="both jobs done", timeout=600)
        cli("stop", "--base-dir", base)
        assert d.wait(60) == 0, daemon_log(base)
    [job] = [n for n in os.listdir(layout.done) if n != high]
    meta = json.loads((layout.done / job / "job.json").read_text())
    first = json.loads((layout.done / high / "job.json").read_text())
    assert [a["outcome"] for a in meta["attempts"]] == ["preempted", "finished"]
    assert meta["attempts"][0]["error"] == f"preempted by {high}" and meta["preempted_by"] == high
    assert first["attempts"][0]["started_at"] > meta["attempts"][0]["ended_at"]  # it trained in between
    assert meta["attempts"][1]["started_at"] > first["attempts"][-1]["ended_at"]
    assert (first["version"], meta["version"]) == ("v0001", "v0002")
    # Resumed at the step after the preemption's checkpoint: nothing lost, nothing repeated.
    steps = [json.loads(x) for x in (layout.done / job / "metrics.jsonl").read_text().splitlines()]
    stopped_at = max(r["step"] for r in steps if r["attempt"] == 1)
    assert 6 <= stopped_at < 48 and min(r["step"] for r in steps if r["attempt"] == 2) == stopped_at + 1
    assert meta["steps_done"] == 48 and meta["examples_done"] == 96
    from safetensors.torch import load_file

    assert_same_weights(load_file(str(layout.models / "v0002" / "adapter_model.safetensors")), reference[0])
    man = json.loads((layout.models / "v0002" / "manifest.json").read_text())
    assert man["parent"] == "base" and man["gate"]["action"] == "held"
    assert man["gate"]["verdict"] == f"held: trained from base; v0001 (job {high}, which preempted it) became " \
                                     "current meanwhile"
    assert meta["gate"]["verdict"] == man["gate"]["verdict"]
    assert os.readlink(layout.current_model) == "v0001"
    refused = cli("models", "rollback", "v0002", "--base-dir", base, check=False)
    assert refused.returncode != 0 and "--force" in refused.stdout + refused.stderr
    cli("models", "rollback", "v0002", "--force", "--base-dir", base)
    assert os.readlink(layout.current_model) == "v0002"
