"""method = "full": the same recipe, publishing full-weight versions along the line."""

import json
import os

import pytest

from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd.paths import Layout

pytestmark = pytest.mark.slow


def test_full_fine_tune_publishes_full_versions_that_load_anywhere(tmp_path, tiny_model):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_base(tmp_path / "b", tiny_model, '[train]\nmethod = "full"\nlearning_rate = 1e-3\n')
    write_jsonl(base / "inbox" / "1.jsonl", chat_rows(24, "tau"))
    write_jsonl(base / "inbox" / "2.jsonl", chat_rows(24, "upsilon"))
    cli("run", "--base-dir", base, "--once")
    layout = Layout.at(base)
    assert len(os.listdir(layout.done)) == 2 and not os.listdir(layout.failed)
    m1, m2 = (json.loads((layout.models / v / "manifest.json").read_text()) for v in ("v0001", "v0002"))
    assert m1["kind"] == m2["kind"] == "full" and m1["base"] is None
    assert m1["parent"] == "base" and m2["parent"] == "v0001"  # the line, not the base again
    assert os.readlink(layout.current_model) == "v0002"

    # Every weight was trained (not an adapter), and the second job moved on from the first.
    w0 = load_file(str(tiny_model / "model.safetensors"))
    w1 = load_file(str(layout.models / "v0001" / "model.safetensors"))
    w2 = load_file(str(layout.models / "v0002" / "model.safetensors"))
    assert w0.keys() == w1.keys() == w2.keys()
    moved = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert len(moved) >= len(w0) - 1, "full fine-tune left weights untouched"
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)

    # A published full model is a plain HF checkpoint: no training-only attention name,
    # the KV cache back on, loadable and able to generate with transformers alone.
    cfg = json.loads((layout.models / "v0002" / "config.json").read_text())
    assert "trainerd" not in json.dumps(cfg) and cfg.get("use_cache") is True
    tok = AutoTokenizer.from_pretrained(layout.models / "v0002")
    model = AutoModelForCausalLM.from_pretrained(layout.models / "v0002")
    ids = tok.apply_chat_template([{"role": "user", "content": "Say the tau code number 3."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]

    # Training moved the loss: the first job's last steps below its first ones.
    [first] = [d for d in os.listdir(layout.done) if d.endswith("-1")]
    rows = [json.loads(x) for x in (layout.done / first / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]


def _modes(root) -> dict[str, int]:
    out = {".": os.stat(root).st_mode & 0o777}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = os.lstat(p).st_mode & 0o777
    return out


def _readable(root) -> None:
    modes = _modes(root)
    bad = {p: oct(m) for p, m in modes.items() if m != (0o755 if os.path.isdir(os.path.join(root, p)) else 0o644)}
    assert not bad, f"{root}: not readable by a serving user: {bad}"


@pytest.mark.slow
def test_versions_snapshots_and_exports_are_readable_whatever_the_umask(trained_line, tmp_path):
    """trained_line's daemon ran under umask 0077; exports and snapshots are made under it
    too. Every file is 0644 and every folder 0755 (safetensors alone would be 0600)."""
    import subprocess

    from tests.conftest import trainerd_cmd

    base = trained_line["base"]
    for v in ("v0001", "v0002"):
        _readable(base / "models" / v)

    def under_umask(*args: str) -> None:
        p = subprocess.run([*trainerd_cmd(), *args, "--base-dir", str(base)], capture_output=True, text=True,
                           timeout=600, preexec_fn=lambda: os.umask(0o077))
        assert p.returncode == 0, p.stderr

    under_umask("models", "export", "v0002", str(tmp_path / "plain"))
    under_umask("models", "export", "v0002", str(tmp_path / "merged"), "--merged")
    under_umask("models", "snapshot")
    for d in (tmp_path / "plain", tmp_path / "merged", *(base / "snapshots").iterdir()):
        _readable(d)
