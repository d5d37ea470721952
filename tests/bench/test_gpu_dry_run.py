"""bench/gpu.sh --dry-run: the GPU bench's own code, run for real on the CPU at test size.

Until a GPU is lent, this is what keeps the script that must work first time on one
from rotting: the shell wrapper, the model builder, a trainerd worker on a claimed job,
the plain HF script, the report, and QLoRA's refusal by the daemon's preflight.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ONLY = "lora trainerd packed_sdpa,full plain HF,qlora"


def test_gpu_sh_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "TRAINERD_BENCH_DEPS": str(tmp_path / "deps")}
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run", "--only", ONLY, "--examples", "24",
                        "--resume-check", "lora trainerd packed_sdpa",  # QLoRA's resume path, on LoRA
                        "--work-dir", str(tmp_path / "work"), "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    ran = [res["lora trainerd packed_sdpa"], res["full plain HF padded"]]
    for r in ran:
        assert "error" not in r and "skipped" not in r, r
        assert r["tokens_per_s"] > 0 and r["checkpoint_s"] >= 0 and r["flops_per_token"] > 0
        assert r["steps"] == 6  # 24 examples, micro-batch 4
    # The same examples, token for token, except that trainerd drops what follows the last
    # trained token of a sequence (the template's newline after the final end-of-turn
    # marker: nothing learns from it), at most one token an example here.
    assert 0 <= ran[1]["real_tokens"] - ran[0]["real_tokens"] <= 24
    assert ran[0]["checkpoint_bytes"] > 0  # a committed checkpoint
    # Stopped warm with a checkpoint, resumed on the next step, published an adapter.
    note = ran[0]["note"]
    stopped = int(note.split("stopped at step ")[1].split(",")[0])
    assert f"resumed at step {stopped + 1}; published v0001 (adapter on model)" in note, note
    assert 'train.quantization = "4bit" needs' in res["qlora trainerd packed_sdpa"]["skipped"]
    assert res["lora trainerd flex_attention"]["skipped"] == "not in --only"
    assert "lora trainerd packed_sdpa" in p.stdout and "total" in p.stdout  # the printed table
