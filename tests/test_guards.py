"""Guards in the training loop and the daemon, each driven by a real cause (real model,
real processes, a real small filesystem where the machine allows mounting one)."""

import json
import os
import subprocess

import pytest

from tests.conftest import chat_rows, cli, make_base, start_daemon, tmpfs, wait_for, write_jsonl
from trainerd.paths import Layout

pytestmark = pytest.mark.slow

RARE = "Ωmega"  # bytes no other example in these tests uses
RARE_EXAMPLE = {"messages": [{"role": "user", "content": f"Spell {RARE}."},
                             {"role": "assistant", "content": "I cannot."}]}


@pytest.fixture(scope="module")
def poisoned_model(tmp_path_factory, tiny_model):
    """The tiny model, untied, with NaN in the input embedding of the tokens only RARE uses:
    a corrupted weight that only one example ever touches (as in real corrupted shards)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("poison") / "model"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    def ids(msgs):
        return set(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])

    common = set().union(*(ids(r["messages"]) for r in chat_rows(64)))
    rare = ids(RARE_EXAMPLE["messages"]) - common
    assert rare
    with torch.no_grad():
        for t in rare:
            model.get_input_embeddings().weight[t] = float("nan")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_nan_rolls_back_retries_once_then_fails_with_the_step_and_lines(tmp_path, poisoned_model):
    base = make_base(tmp_path / "b", poisoned_model, "[train]\nmicro_batch_size = 2\n[checkpoint]\nevery_steps = 2\n")
    rows = chat_rows(40)
    rows[29] = RARE_EXAMPLE
    write_jsonl(base / "inbox" / "p.jsonl", rows)
    cli("run", "--base-dir", base, "--once")
    layout = Layout.at(base)
    [job] = os.listdir(layout.failed)
    meta = json.loads((layout.failed / job / "job.json").read_text())
    err = json.loads((layout.failed / job / "error.json").read_text())
    assert [a["outcome"] for a in meta["attempts"]] == ["nonfinite", "nonfinite"]
    assert meta["nonfinite_events"] == 2
    assert "diverged twice" in err["reason"] and "lines" in err["reason"]
    assert "30" in err["reason"].split("lines")[1]  # the poisoned example, by its line number
    assert "became nan at step" in err["reason"]
    # The second attempt resumed from the last good checkpoint, not from the start.
    log = (layout.failed / job / "worker.log").read_text()
    assert "resuming from step-" in log
    assert not os.path.lexists(layout.current_model)  # nothing NaN was ever published


def test_out_of_memory_halves_the_micro_batch_then_gives_up_with_a_reason(tmp_path, tiny_model):
    # A 1 MB RSS ceiling: every attempt passes it at its first step, as a model too big
    # for the machine would at any micro-batch.
    base = make_base(tmp_path / "b", tiny_model, "[train]\nmax_host_memory_gb = 0.001\n")
    write_jsonl(base / "inbox" / "m.jsonl", chat_rows(16))
    cli("run", "--base-dir", base, "--once")
    layout = Layout.at(base)
    [job] = os.listdir(layout.failed)
    meta = json.loads((layout.failed / job / "job.json").read_text())
    assert [h["micro_batch_size"] for h in meta["history"] if h["event"] == "oom_fallback"] == [2, 1]
    assert [a["outcome"] for a in meta["attempts"]] == ["resource_error"] * 3
    err = json.loads((layout.failed / job / "error.json").read_text())
    assert "out of memory even at micro-batch 1" in err["reason"] and "max_host_memory_gb" in err["reason"]
    assert "grad_accum 4" in (layout.failed / job / "worker.log").read_text()  # 1 x 4 = the configured 4


@pytest.fixture
def small_fs(tmp_path):
    with tmpfs(tmp_path / "fs", 24) as mnt:  # skipped where not allowed: the fake-reading test covers the logic
        yield mnt


def fill(path, leave_bytes):
    import shutil

    free = shutil.disk_usage(path.parent).free
    with open(path, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, free - leave_bytes))


def status(base):
    return json.loads(cli("status", "--base-dir", base, "--json").stdout)


def test_disk_guard_on_a_real_small_filesystem(small_fs, tiny_model):
    base = make_base(small_fs / "b", tiny_model, "[train]\nmicro_batch_size = 2\n[disk]\nmin_free_mb = 8\n")
    write_jsonl(base / "inbox" / "d.jsonl", chat_rows(96))
    filler = small_fs / "filler"
    d = start_daemon(base)
    try:
        wait_for(lambda: any((j / "progress.json").exists() for j in Layout.at(base).active.iterdir()),
                 what="training")
        fill(filler, 4 * 1024 * 1024)  # 4 MB left: under the 8 MB floor
        wait_for(lambda: status(base)["daemon"].get("state") == "paused_disk", what="self-pause")
        st = json.loads((base / "run" / "status.json").read_text())
        assert "MB free" in st["paused_reason"] and st["disk"]["low"]
        layout = Layout.at(base)
        [job] = os.listdir(layout.active)  # paused, not failed
        ckdir = layout.active / job / "checkpoints"
        for c in os.listdir(ckdir):  # every visible checkpoint is complete
            if c.startswith("step-"):
                assert (ckdir / c / "manifest.json").exists()
        filler.unlink()
        wait_for(lambda: os.listdir(layout.done), what="resumed and finished", timeout=180)
        cli("stop", "--base-dir", base)
        assert d.wait(60) == 0
    finally:
        if d.poll() is None:
            d.kill()
    meta = json.loads((Layout.at(base).done / job / "job.json").read_text())
    assert meta["examples_done"] == 96 and all(a["outcome"] not in ("crashed",) for a in meta["attempts"])


def test_disk_guard_with_a_fake_reading(tmp_path, tiny_model):
    """Where no filesystem can be mounted: the documented reading hook, same outcomes."""
    base = make_base(tmp_path / "b", tiny_model, "[train]\nmicro_batch_size = 2\n[disk]\nmin_free_mb = 100\n")
    fake = tmp_path / "free"
    fake.write_text(str(50 * 2**20))
    write_jsonl(base / "inbox" / "d.jsonl", chat_rows(16))
    env = dict(os.environ, TRAINERD_FAKE_FREE_BYTES_FILE=str(fake))
    with open(base / "daemon.out", "ab") as log:
        d = subprocess.Popen([*__import__("tests.conftest", fromlist=["x"]).trainerd_cmd(), "run",
                              "--base-dir", str(base)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: status(base)["daemon"].get("state") == "paused_disk", what="self-pause")
        assert os.listdir(Layout.at(base).active) == [] and status(base)["queue"]["queued"] == 1
        fake.write_text(str(500 * 2**20))
        wait_for(lambda: os.listdir(Layout.at(base).done), what="trained after space returned", timeout=120)
        cli("stop", "--base-dir", base)
        assert d.wait(60) == 0
    finally:
        if d.poll() is None:
            d.kill()


def test_daemon_started_on_a_full_disk_waits_then_recovers_and_trains(small_fs, tiny_model):
    """Found by the full-disk campaign (tests/chaos/disk.py): a daemon (re)started on a 100%
    full disk died at once (ENOSPC writing the lock's pid, then recovery's job.json). Now it
    stays up, says it is paused for disk as soon as it can write a word, finishes recovery
    and trains when space returns."""
    from trainerd.config import QueueConfig
    from trainerd.jobs import Priority
    from trainerd.queue import Queue

    base = make_base(small_fs / "b", tiny_model, "[disk]\nmin_free_mb = 8\n")
    layout = Layout.at(base)
    q = Queue(layout, QueueConfig())
    q.submit(write_jsonl(small_fs / "src.jsonl", chat_rows(8)))
    ref = q.claim()
    q.record_attempt_start(ref, 12345, Priority.NORMAL)  # as a kill -9 mid-attempt leaves it
    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 65536)
    d = start_daemon(base)
    try:
        import time

        time.sleep(3)
        assert d.poll() is None, (base / "daemon.out").read_text()[-2000:]
        with open(filler, "r+b") as f:  # someone frees 2 MB: still under the 8 MB floor
            f.truncate(os.path.getsize(filler) - 2 * 2**20)
        def reason():
            try:
                return json.loads((base / "run" / "status.json").read_text()).get("paused_reason") or ""
            except (OSError, ValueError):
                return ""

        wait_for(lambda: "MB free" in reason(), what="paused for disk, with the reason")
        filler.unlink()
        wait_for(lambda: os.listdir(layout.done), what="recovered and trained", timeout=180)
        cli("stop", "--base-dir", base)
        assert d.wait(60) == 0
    finally:
        if d.poll() is None:
            d.kill()
    meta = json.loads((layout.done / ref.id / "job.json").read_text())
    assert [a["outcome"] for a in meta["attempts"]] == ["interrupted", "finished"]
