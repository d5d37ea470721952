"""Consolidation in its own process with the real tiny model: it gives way to waiting work,
merges, verifies before `current` moves, sets a failed merge aside, and training goes on
from the merged version with a fresh adapter."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd import atomic
from trainerd.config import ConsolidateConfig, ScheduleConfig, load_config
from trainerd.jobs import ExitCode, JobMeta
from trainerd.line.errors import LineError
from trainerd.line.refs import current
from trainerd.line.rollback import rollback
from trainerd.line.versions import current_name, line_state, versions
from trainerd.paths import Layout
from trainerd.schedule import CONSOLIDATE, Housekeeping
from trainerd.worker import models

pytestmark = pytest.mark.slow


def hand_adapter(base: Path, seed: int = 0) -> str:
    """A version published the way a job publishes one, without the training: a LoRA made
    by the worker's own loader, with B set to random values (it starts at zero)."""
    import torch

    layout = Layout.at(base)
    cfg = load_config(layout.config)
    parent = current(layout, cfg)
    torch.manual_seed(seed)
    model = models.load_for_training(parent, cfg.train)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    meta = JobMeta(id=f"20261120T000000-00000{seed}-hand", original_name="hand.jsonl",
                   sha256="0" * 64, size=1, examples=1)
    return models.publish(layout, model, models.load_tokenizer(parent), parent, meta)


def consolidate(base: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainerd.worker.consolidate", "--base-dir", str(base)],
                          capture_output=True, text=True, timeout=300)


def lora_b(version_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(version_dir / "adapter_model.safetensors")).items() if "lora_B" in k}


def test_waits_for_idle_merges_verified_and_training_continues_fresh(tmp_path, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = make_base(tmp_path / "b", tiny_model, "[train]\nwarmup_steps = 0\n")
    layout = Layout.at(base)
    assert hand_adapter(base) == "v0001"
    old = layout.done / "20261119T000000-000001-old"  # a finished job: the probe set's source
    old.mkdir(parents=True)
    write_jsonl(old / "data.jsonl", chat_rows(12, "old"))

    # Work waiting: the daemon's hook never starts a merge; work arriving once it has started
    # makes the hook ask it to stop (fix #8). Nothing changes, and it is retried when idle.
    house = Housekeeping(layout, ScheduleConfig(snapshot_at="off"), ConsolidateConfig(every_jobs=1))
    assert house.tick(idle=False) is None
    assert house.tick(idle=True) == CONSOLIDATE
    assert house.tick(idle=False) == CONSOLIDATE and house.child.asked_to_stop
    deadline = time.monotonic() + 300
    while house.tick(idle=False) == CONSOLIDATE:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert current_name(layout) == "v0001" and versions(layout) == ["v0001"]
    assert house.retry_at[CONSOLIDATE] > time.monotonic()  # stopped, not failed: again when idle
    assert "failed_version" not in house.sched.info(CONSOLIDATE)
    if (layout.run / "consolidation.json").exists():  # absent if the signal beat its handler
        assert atomic.read_json(layout.run / "consolidation.json")["status"] in ("deferred", "stopped")

    # Idle: the supervisor's hook starts it (every_jobs = 1) and waits for it.
    house = Housekeeping(layout, ScheduleConfig(snapshot_at="off"), ConsolidateConfig(every_jobs=1))
    assert house.tick(idle=True) == CONSOLIDATE
    deadline = time.monotonic() + 300
    while house.tick(idle=True) == CONSOLIDATE:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert current_name(layout) == "v0002", (layout.logs / "consolidate.log").read_text()
    man = atomic.verify_manifest(layout.models / "v0002")
    assert (man["kind"], man["parent"], man["base"]) == ("full", "v0001", None)
    assert man["consolidated"]["probe"] == "done jobs' data" and man["consolidated"]["probe_examples"] == 12
    assert abs(man["consolidated"]["merged_loss"] - man["consolidated"]["adapter_loss"]) < 1e-3
    assert man["jobs"][0]["id"] == "20261120T000000-000000-hand"
    assert house.tick(idle=True) is None  # a full current: nothing more to merge
    assert consolidate(base).returncode == ExitCode.FINISHED  # by hand too: nothing to do

    # The merged weights are base + adapter, for a plain HF reader.
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                         layout.models / "v0001").eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(layout.models / "v0002").eval()(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()(ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())
    assert not torch.allclose(got, plain, atol=1e-3)

    # The next job trains from the merged version with a fresh adapter.
    write_jsonl(base / "inbox" / "delta.jsonl", chat_rows(8, "delta"))
    cli("run", "--base-dir", base, "--once", timeout=600)
    v3 = atomic.verify_manifest(layout.models / "v0003")
    assert (v3["kind"], v3["parent"], v3["base"]) == ("adapter", "v0002", str(layout.models / "v0002"))
    assert line_state(layout).jobs_since_full == 1
    b1, b3 = lora_b(layout.models / "v0001"), lora_b(layout.models / "v0003")
    dist = sum(float((b3[k] - b1[k]).norm() ** 2) for k in b1) ** 0.5
    norm1 = sum(float(b1[k].norm() ** 2) for k in b1) ** 0.5
    norm3 = sum(float(b3[k].norm() ** 2) for k in b3) ** 0.5
    assert 0 < norm3 < 0.5 * norm1 and dist > 0.9 * norm1  # new and small, not v0001 continued


def test_a_merge_that_fails_verification_is_set_aside(tmp_path, tiny_model):
    from safetensors.torch import load_file, save_file

    base = make_base(tmp_path / "b", tiny_model)
    layout = Layout.at(base)
    hand_adapter(base)
    # Damage the adapter's numbers (not its files): the manifest verifies, the weights are NaN.
    v1 = layout.models / "v0001"
    tensors = load_file(str(v1 / "adapter_model.safetensors"))
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(v1 / "adapter_model.safetensors"), metadata={"format": "pt"})
    man = atomic.read_json(v1 / "manifest.json")
    atomic.write_manifest(v1, {k: v for k, v in man.items() if k != "files"})

    r = consolidate(base)
    assert r.returncode == ExitCode.NONFINITE, r.stderr
    assert current_name(layout) == "v0001" and versions(layout) == ["v0001"]
    [aside] = [p for p in layout.models.iterdir() if p.name.startswith("rejected-")]
    assert aside.name.startswith("rejected-v0002-of-v0001-")
    assert "non-finite" in atomic.verify_manifest(aside)["rejected"]
    result = atomic.read_json(layout.run / "consolidation.json")
    assert result["status"] == "rejected" and result["path"] == str(aside)
    with pytest.raises(LineError):
        rollback(layout, aside.name)
    assert not [p for p in layout.models.iterdir() if p.name.startswith(".")]


def test_probe_rows_follow_the_configured_probe_file(tmp_path):
    """Consolidation verifies on the same probe set as the evals: `[eval] probe_file`."""
    import json

    from trainerd.worker.consolidate import probe_rows

    layout = Layout.at(tmp_path / "b")
    layout.ensure()
    (layout.base / "held").mkdir()
    rows = chat_rows(3, "phi")
    (layout.base / "held" / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    got, source = probe_rows(layout, 10, "held/set.jsonl")
    assert got == rows and source == str(layout.base / "held" / "set.jsonl")
    absolute = tmp_path / "elsewhere.jsonl"
    absolute.write_text(json.dumps(rows[0]) + "\n")
    assert probe_rows(layout, 10, str(absolute)) == ([rows[0]], str(absolute))
