"""`[train] nproc = 2`: the worker as a torchrun group (DDP over gloo on the CPU).

Two processes with micro-batch 2 do the same arithmetic as one process with micro-batch 4:
accelerate hands batch 2s to rank 0 and 2s+1 to rank 1, the loss is normalised by the
tokens of the whole group, and the last, short round is completed with label-free filler
items. So a paused-and-resumed 2-process run must end on the weights of an uninterrupted
1-process run, up to the order of floating-point sums.
"""

import json
import os

import pytest

from tests.conftest import chat_rows, cli, daemon, daemon_log, make_base, wait_for, write_jsonl
from tests.test_supervisor import active_dir, final_adapter, finished_meta, progress
from trainerd import atomic
from trainerd.paths import Layout

pytestmark = pytest.mark.slow

N = 162  # not a multiple of 4: the group's last round needs fillers
GROUP = "[train]\nnproc = 2\nmicro_batch_size = 2\n[checkpoint]\nevery_steps = 3\n"
SINGLE = "[train]\nmicro_batch_size = 4\n[checkpoint]\nevery_steps = 3\n"


def _pause_and_resume(base):
    with daemon(base) as d:
        wait_for(lambda: (progress(base) or {}).get("step", 0) >= 4, timeout=300, what="step 4")
        cli("pause", "--base-dir", base)
        job = active_dir(base)
        wait_for(lambda: json.loads((job / "job.json").read_text())["attempts"][-1].get("outcome") == "stopped",
                 timeout=120, what="group stopped")
        meta = json.loads((job / "job.json").read_text())
        step = meta["steps_done"]
        ckpt = job / "checkpoints" / f"step-{step:06d}"
        man = atomic.verify_manifest(ckpt)  # complete, every file hashed
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(man["files"])  # both ranks' state
        assert not os.listdir(Layout.at(base).done)
        cli("resume", "--base-dir", base)
        wait_for(lambda: os.listdir(Layout.at(base).done), timeout=300, what="job done")
        cli("stop", "--base-dir", base)
        assert d.wait(60) == 0


def test_two_process_group_pauses_resumes_and_equals_one_process(tmp_path, tiny_model):
    import torch

    one = make_base(tmp_path / "one", tiny_model, SINGLE)
    write_jsonl(one / "inbox" / "k.jsonl", chat_rows(N, "rho"))
    cli("run", "--base-dir", one, "--once")
    reference = final_adapter(one)

    base = make_base(tmp_path / "two", tiny_model, GROUP)
    write_jsonl(base / "inbox" / "k.jsonl", chat_rows(N, "rho"))
    try:
        _pause_and_resume(base)
    except Exception as e:  # a group has more moving parts: say what each one said
        logs = [p.read_text()[-3000:] for p in sorted(base.glob("jobs/*/*/worker.log"))]
        raise AssertionError(f"{e}\n--- daemon ---\n{daemon_log(base)[-3000:]}\n--- worker ---\n"
                             + "\n".join(logs)) from e

    meta = finished_meta(base)
    assert [a["outcome"] for a in meta["attempts"]] == ["stopped", "finished"]
    assert meta["steps_done"] == 41 and meta["examples_done"] == N
    models = Layout.at(base).models
    assert sorted(n for n in os.listdir(models) if n.startswith("v")) == ["v0001"]  # rank 0 alone published
    assert json.loads((models / "v0001" / "manifest.json").read_text())["examples_trained"] == N
    log = (Layout.at(base).done / meta["id"] / "worker.log").read_text()
    assert log.count("trainerd.line.commit: published v0001") == 1
    # Same examples in every step, before and after the pause: the logged losses agree
    # step by step. The weights agree up to float summation order (two ranks' gradients
    # are added by an all-reduce), which Adam carries through 41 steps to a few 1e-5 on
    # values around 0.1; a wrong order, a lost or a repeated example moves them by 1e-2.
    losses = {}
    for b in (one, base):
        [job_id] = os.listdir(Layout.at(b).done)
        rows = [json.loads(x) for x in (Layout.at(b).done / job_id / "metrics.jsonl").read_text().splitlines()]
        losses[b] = {r["step"]: r["loss"] for r in rows}
    assert sorted(losses[base]) == sorted(losses[one]) == list(range(1, 42))
    torch.testing.assert_close([losses[base][s] for s in range(1, 42)], [losses[one][s] for s in range(1, 42)],
                               rtol=1e-4, atol=0)
    ours = final_adapter(base)
    assert ours.keys() == reference.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], reference[k], rtol=0, atol=2e-4, msg=k)


def test_a_killed_daemon_takes_its_torchrun_group_with_it(tmp_path, tiny_model):
    """kill -9 of the daemon: the agent (PR_SET_PDEATHSIG, kept across the launcher's exec)
    and then its ranks die at once, so no orphan group trains beside a restarted daemon."""
    import signal

    import psutil

    from tests.conftest import start_daemon

    base = make_base(tmp_path / "b", tiny_model, GROUP)
    write_jsonl(base / "inbox" / "k.jsonl", chat_rows(400, "sigma"))

    def group() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if str(base) in cmd and ("trainerd.worker" in cmd or "torch.distributed.run" in cmd):
                found.append(p)
        return [p for p in found if p.status() != psutil.STATUS_ZOMBIE]

    d = start_daemon(base)
    try:
        procs = wait_for(lambda: (lambda g: g if len(g) == 3 else None)(group()), timeout=120, what="agent + 2 ranks")
        assert sum("torch.distributed.run" in " ".join(p.cmdline()) for p in procs) == 1
    finally:
        os.kill(d.pid, signal.SIGKILL)
        d.wait()
    wait_for(lambda: not group(), timeout=10, what="the group to die with the daemon")
