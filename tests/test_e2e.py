"""End to end with real processes and the real tiny model: the foundation's promises."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd.paths import Layout

pytestmark = pytest.mark.slow


def _adapter(version_dir):
    from safetensors.torch import load_file

    return load_file(str(version_dir / "adapter_model.safetensors"))


def test_two_files_train_into_a_model_line_that_plain_hf_can_load(base, tiny_model):
    write_jsonl(base / "inbox" / "first.jsonl", chat_rows(24, "alpha"))
    write_jsonl(base / "inbox" / "second.jsonl", [{"prompt": f"Q{i}:", "completion": f" A{i}"} for i in range(16)])
    p = cli("run", "--base-dir", base, "--once")
    layout = Layout.at(base)
    done = sorted(os.listdir(layout.done))
    assert len(done) == 2, p.stderr
    assert os.listdir(layout.failed) == [] and os.listdir(layout.active) == []
    assert os.readlink(layout.current_model) == "v0002"

    v1 = json.loads((layout.models / "v0001" / "manifest.json").read_text())
    v2 = json.loads((layout.models / "v0002" / "manifest.json").read_text())
    assert v1["parent"] == "base" and v2["parent"] == "v0001"
    assert v1["jobs"][0]["name"] == "first.jsonl" and v2["jobs"][0]["name"] == "second.jsonl"
    assert v2["kind"] == "adapter" and v2["base"] == str(tiny_model)
    for d in done:  # a finished job keeps no checkpoints; its attempt is recorded
        job = json.loads((layout.done / d / "job.json").read_text())
        assert job["attempts"][-1]["outcome"] == "finished" and job["attempts"][-1]["exit_code"] == 0
        assert not (layout.done / d / "checkpoints").exists()
        assert "FutureWarning" not in (layout.done / d / "worker.log").read_text()  # filtered in the worker
    log = (layout.logs / "trainerd.log").read_text()  # one line per publish, with the version
    assert "published v0001 from first.jsonl" in log and "published v0002 from second.jsonl" in log, log

    # The second job continued the first job's adapter, not a fresh one: LoRA B starts at
    # zero, so a fresh adapter would be unrelated to v0001 (distance ~ its own norm).
    a1, a2 = _adapter(layout.models / "v0001"), _adapter(layout.models / "v0002")
    b_keys = [k for k in a1 if "lora_B" in k]
    assert b_keys
    import torch

    dist = sum((a2[k] - a1[k]).norm() ** 2 for k in b_keys) ** 0.5
    norm1 = sum(a1[k].norm() ** 2 for k in b_keys) ** 0.5
    assert norm1 > 0 and dist < 0.9 * norm1, (float(dist), float(norm1))

    # Plain transformers + peft load what trainerd published, and it generates.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(layout.current_model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), layout.current_model)
    ids = tok.apply_chat_template([{"role": "user", "content": "Say the alpha code number 3."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert torch.isfinite(model(**ids).logits).all()

    s = json.loads(cli("status", "--base-dir", base, "--json").stdout)
    assert s["daemon"]["running"] is False and s["model"]["version"] == "v0002"
    assert [j["name"] for j in s["done"]] == ["first.jsonl", "second.jsonl"]
    assert all(j["last_loss"] < j["first_loss"] for j in s["done"])


def test_worker_failures_never_take_the_supervisor_down(tmp_path, tiny_model):
    base = make_base(tmp_path / "b", tiny_model, "[queue]\nmax_attempts = 2\n[train]\nmax_seq_len = 100\n")
    long = [{"messages": [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}]}]
    write_jsonl(base / "inbox" / "a_toolong.jsonl", chat_rows(3) + long)  # data error in the worker
    write_jsonl(base / "inbox" / "b_good.jsonl", chat_rows(8))
    cli("run", "--base-dir", base, "--once")
    layout = Layout.at(base)
    [failed] = os.listdir(layout.failed)
    err = json.loads((layout.failed / failed / "error.json").read_text())
    assert "line 4" in err["reason"] and "max_seq_len" in err["reason"]
    assert len(os.listdir(layout.done)) == 1

    # A model whose weights cannot be loaded (config and tokenizer are fine, so preflight
    # passes) crashes every attempt: retried, then failed with the worker's own error, and
    # the daemon exits cleanly. (A base_model that is not there at all refuses to start:
    # tests/test_preflight.py.)
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    base = make_base(tmp_path / "c", broken, "[queue]\nmax_attempts = 2\n")
    layout = Layout.at(base)
    write_jsonl(base / "inbox" / "c.jsonl", chat_rows(4))
    p = cli("run", "--base-dir", base, "--once")
    crashed = [d for d in os.listdir(layout.failed) if d.endswith("-c")]
    assert crashed, p.stderr
    job = json.loads((layout.failed / crashed[0] / "job.json").read_text())
    assert [a["outcome"] for a in job["attempts"]] == ["crashed", "crashed"]
    err = json.loads((layout.failed / crashed[0] / "error.json").read_text())
    assert "gave up after 2" in err["reason"] and "safetensor" in err["reason"].lower()


def test_status_does_not_import_torch(base):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from trainerd.cli import app\n"
        f"r = CliRunner().invoke(app, ['status', '--base-dir', {str(base)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'not running' in r.output, r.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
