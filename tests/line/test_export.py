"""Exports load with plain transformers/peft; the merged one comes from a worker child."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import chat_rows, make_base, write_jsonl
from tests.line.conftest import line, run_once, truncate
from trainerd import atomic
from trainerd.line.errors import LineError
from trainerd.line.export import export
from trainerd.line.rollback import rollback
from trainerd.line.show import show
from trainerd.line.versions import chain, current_name, list_versions
from trainerd.paths import Layout


@pytest.mark.slow
def test_model_line_rollback_export_and_corruption(tmp_path, tiny_model):
    base = make_base(tmp_path / "b", tiny_model, "[train]\nwarmup_steps = 0\n")
    layout = Layout.at(base)
    write_jsonl(base / "inbox" / "a_first.jsonl", chat_rows(8, "alpha"))
    write_jsonl(base / "inbox" / "b_second.jsonl", chat_rows(8, "beta"))
    run_once(base)
    assert [v.name for v in list_versions(layout)] == ["v0001", "v0002"]
    assert chain(layout, "v0002") == ["v0002", "v0001"]
    assert show(layout, "v0002")["parent"] == "v0001"

    # Roll back; the next job trains from v0001.
    assert rollback(layout, "v0001") == {"from": "v0002", "to": "v0001"}
    write_jsonl(base / "inbox" / "c_third.jsonl", chat_rows(8, "gamma"))
    run_once(base)
    v3 = show(layout, "current")
    assert v3["name"] == "v0003" and v3["parent"] == "v0001" and v3["ok"]
    assert v3["jobs"][0]["name"] == "c_third.jsonl"
    assert chain(layout, "v0003") == ["v0003", "v0001"]

    # Exports reload with plain transformers / peft, no trainerd involved.
    out_a, out_m = tmp_path / "export-adapter", tmp_path / "export-merged"
    export(layout, "v0003", out_a)
    export(layout, "v0003", out_m, merged=True)
    code = f"""
import torch
from peft import PeftModel, PeftConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
a = {str(out_a)!r}; m = {str(out_m)!r}
base = PeftConfig.from_pretrained(a).base_model_name_or_path
assert base == {str(tiny_model)!r}, base
tok = AutoTokenizer.from_pretrained(a)
ids = tok.apply_chat_template([{{"role": "user", "content": "Say the gamma code number 3."}}],
                              add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
with torch.no_grad():
    la = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), a).eval()(ids).logits
    lm = AutoModelForCausalLM.from_pretrained(m).eval()(ids).logits
    lb = AutoModelForCausalLM.from_pretrained(base).eval()(ids).logits
assert torch.allclose(la, lm, atol=1e-4, rtol=1e-4), (la - lm).abs().max()
assert not torch.allclose(la, lb, atol=1e-4), "the adapter changed nothing?"
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    for d in (out_a, out_m):
        atomic.verify_manifest(d)

    # A truncated safetensors file: show says so, rollback refuses, current stays.
    truncate(layout.models / "v0002" / "adapter_model.safetensors")
    bad = show(layout, "v0002")
    assert not bad["ok"] and "adapter_model.safetensors" in bad["problems"][0]
    with pytest.raises(LineError):
        rollback(layout, "v0002")
    assert current_name(layout) == "v0003"


def test_an_adapter_exports_with_the_path_of_its_base_and_never_over_a_folder(layout):
    line(layout)
    out = layout.base.parent / "out"
    r = export(layout, "v0005", out)
    assert r == {"path": str(out), "version": "v0005", "kind": "adapter", "base": str(layout.models / "v0003")}
    acfg = atomic.read_json(out / "adapter_config.json")
    assert acfg["base_model_name_or_path"] == str(layout.models / "v0003")  # a plain peft load finds it
    assert atomic.verify_manifest(out, check_hashes=True)["exported_from"] == "v0005"
    with pytest.raises(LineError, match="already exists and is not an empty folder"):
        export(layout, "v0004", out)
    truncate(layout.models / "v0004" / "adapter_model.safetensors")
    with pytest.raises(LineError, match="not exporting v0004"):
        export(layout, "v0004", layout.base.parent / "other")
