"""Warm workers under the real daemon: one process trains a run of jobs (trainerd.handoff,
trainerd.worker.warm), with the same results as a fresh process per job, and kills that land
between two of its jobs or right after a hand-over lose nothing and count nothing twice."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.chaos import invariants
from tests.conftest import (
    chat_rows,
    cli,
    daemon_log,
    gone,
    make_base,
    start_daemon,
    wait_for,
    write_jsonl,
)
from trainerd.paths import Layout

pytestmark = pytest.mark.slow

FILES = 3
TOML = "[train]\nwarm_jobs = {warm}\n[checkpoint]\nevery_steps = 2\n"
# Every candidate held: a probe set whose eval cannot finish in time makes the gate's
# result `unknown`, and `block` holds an unknown.
HOLD_ALL = "[gate]\nmode = \"block\"\n[eval]\nmax_seconds = 1e-9\n"


def deliver(base: Path) -> invariants.Expected:
    exp = invariants.Expected()
    for i in range(FILES):
        rows = chat_rows(12, f"w{i}")
        write_jsonl(base / "inbox" / f"w{i}.jsonl", rows)
        exp.add(f"w{i}.jsonl", (base / "inbox" / f"w{i}.jsonl").read_bytes())
    return exp


def jobs(base: Path) -> list[dict]:
    """job.json of every done job, in the order they were first claimed."""
    done = Layout.at(base).done
    metas = [json.loads((done / j / "job.json").read_text()) for j in os.listdir(done)]
    return sorted(metas, key=lambda m: m["attempts"][0]["started_at"])


def versions(base: Path) -> dict[str, dict]:
    """Each version's adapter weights, by the file name of the job it trained."""
    from safetensors.torch import load_file

    models = Layout.at(base).models
    out = {}
    for v in sorted(p for p in models.iterdir() if p.name.startswith("v")):
        man = json.loads((v / "manifest.json").read_text())
        out[man["jobs"][0]["name"]] = {"parent": man["parent"], "weights": load_file(str(v / "adapter_model.safetensors")),
                                       "held": (man.get("gate") or {}).get("action") == "held"}
    return out


def losses(base: Path) -> dict[str, list[float]]:
    return {m["original_name"]: [json.loads(x)["loss"] for x in
                                 (Layout.at(base).done / m["id"] / "metrics.jsonl").read_text().splitlines()]
            for m in jobs(base)}


def assert_same_line(warm: Path, cold: Path) -> None:
    import torch

    a, b = versions(warm), versions(cold)
    assert a.keys() == b.keys() and len(a) == FILES
    for name in a:
        assert a[name]["parent"] == b[name]["parent"] and a[name]["held"] == b[name]["held"], name
        for k in a[name]["weights"]:
            torch.testing.assert_close(a[name]["weights"][k], b[name]["weights"][k], rtol=1e-5, atol=1e-7,
                                       msg=f"{name}: {k}")
    la, lb = losses(warm), losses(cold)
    assert la.keys() == lb.keys()
    for name in la:
        assert la[name] == pytest.approx(lb[name], rel=1e-5), name


def run_line(root: Path, model: Path, warm: int, extra: str = "") -> Path:
    base = make_base(root, model, TOML.format(warm=warm) + extra)
    if extra:
        write_jsonl(base / "probe.jsonl", chat_rows(4, "probe"))
    deliver(base)
    cli("run", "--base-dir", base, "--once", timeout=900)
    return base


def test_a_warm_worker_trains_the_same_line_as_fresh_processes(tmp_path, tiny_model):
    warm = run_line(tmp_path / "warm", tiny_model, FILES)
    cold = run_line(tmp_path / "cold", tiny_model, 1)
    pids = [m["attempts"][0]["pid"] for m in jobs(warm)]
    assert len(set(pids)) == 1, f"one process for all {FILES} jobs: {pids}"
    assert len({m["attempts"][0]["pid"] for m in jobs(cold)}) == FILES
    assert all(len(m["attempts"]) == 1 and m["attempts"][0]["outcome"] == "finished" for m in jobs(warm))
    later = jobs(warm)[1]
    log = (Layout.at(warm).done / later["id"] / "worker.log").read_text()
    assert "from memory" in log and "Loading weights" not in log  # its own log, no load from disk
    assert_same_line(warm, cold)


def test_a_held_candidate_is_never_continued(tmp_path, tiny_model):
    warm = run_line(tmp_path / "warm", tiny_model, FILES, HOLD_ALL)
    cold = run_line(tmp_path / "cold", tiny_model, 1, HOLD_ALL)
    line = versions(warm)
    assert all(v["held"] and v["parent"] == "base" for v in line.values()), \
        {k: (v["parent"], v["held"]) for k, v in line.items()}
    assert len({m["attempts"][0]["pid"] for m in jobs(warm)}) == 1  # still one process...
    for m in jobs(warm)[1:]:  # ...that loaded the current model (the base) from disk each time
        assert "from memory" not in (Layout.at(warm).done / m["id"] / "worker.log").read_text()
    assert_same_line(warm, cold)


def _handed_over(base: Path) -> bool:
    return "handed to the warm worker" in daemon_log(base)


def _reported(base: Path) -> Path | None:
    """An active job the warm worker reported finished (the daemon has not recorded it)."""
    return next(iter(Layout.at(base).active.glob("*/worker-outcome.json")), None)


def _finish_and_check(base: Path, exp: invariants.Expected) -> list[dict]:
    cli("run", "--base-dir", base, "--once", timeout=900)
    problems = invariants.check(base, exp, final=True)
    assert problems == [], "\n".join(problems)
    done = jobs(base)
    assert len(done) == FILES
    line = invariants.line_jobs(Layout.at(base))
    assert sorted(line) == sorted(m["id"] for m in done)  # each job in the line once
    return done


def test_a_daemon_kill_between_two_jobs_of_a_warm_worker_loses_nothing(tmp_path, tiny_model):
    base = make_base(tmp_path / "b", tiny_model, TOML.format(warm=FILES))
    exp = deliver(base)
    d = start_daemon(base)
    try:
        wait_for(lambda: d.poll() is not None or _handed_over(base), timeout=600, what="a hand-over")
        # Freeze the daemon; the worker finishes its job, reports it and waits for the next
        # one that the frozen daemon cannot record or hand over. Then the kill.
        os.kill(d.pid, signal.SIGSTOP)
        reported = wait_for(lambda: _reported(base), timeout=600, what="the worker's report")
        worker = json.loads(reported.read_text())["pid"]
        d.kill()
        d.wait()
        wait_for(lambda: gone(worker), timeout=30, what="the warm worker to die with its daemon")
    finally:
        if d.poll() is None:
            d.kill()
    _finish_and_check(base, exp)
    # The reported job was published before the kill: found done after it, never retrained
    # (one version per job, none extra).
    names = [p.name for p in Layout.at(base).models.iterdir() if p.name.startswith("v")]
    assert len(names) == FILES, names


def test_a_worker_kill_right_after_a_hand_over_is_that_jobs_failed_attempt(tmp_path, tiny_model):
    base = make_base(tmp_path / "b", tiny_model, TOML.format(warm=FILES))
    exp = deliver(base)
    d = start_daemon(base)
    try:
        wait_for(lambda: d.poll() is not None or _handed_over(base), timeout=600, interval=0.02,
                 what="a hand-over")
        [active] = wait_for(lambda: list(Layout.at(base).active.iterdir()), what="the handed job")
        pid = wait_for(lambda: json.loads((active / "job.json").read_text())["attempts"][-1].get("pid"),
                       what="its attempt's pid")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: d.poll() is not None or (Layout.at(base).done / active.name).is_dir(),
                 timeout=600, what="the killed job to finish on a retry")
        assert d.poll() is None, daemon_log(base)[-3000:]
        d.send_signal(signal.SIGTERM)
        assert d.wait(120) == 0
    finally:
        if d.poll() is None:
            d.kill()
    done = _finish_and_check(base, exp)
    job = next(m for m in done if m["id"] == active.name)
    outcomes = [a["outcome"] for a in job["attempts"]]
    assert outcomes[-1] == "finished" and outcomes.count("finished") == 1, outcomes
    assert len(outcomes) == 2, outcomes  # the kill cost exactly one attempt
