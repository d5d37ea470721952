"""QLoRA (`[train] quantization = "4bit"`) is refused, before any job is claimed, where
bitsandbytes or a CUDA GPU is missing: this CPU machine is such a place, for real."""

import importlib.util
import os

import pytest

from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd.paths import Layout
from trainerd.worker import quant

pytestmark = pytest.mark.slow


def _no_job_claimed(base) -> None:
    layout = Layout.at(base)
    for where in (layout.active, layout.done, layout.failed):
        assert not where.is_dir() or not os.listdir(where), f"a job reached {where}"
    assert os.listdir(layout.inbox) == ["q.jsonl"]  # untouched: not even taken in


def test_run_refuses_4bit_where_bitsandbytes_or_cuda_is_missing(tmp_path, tiny_model):
    import torch

    if importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available():
        pytest.skip("this machine can quantize: nothing to refuse")
    base = make_base(tmp_path / "b", tiny_model, '[train]\nquantization = "4bit"\n')
    write_jsonl(base / "inbox" / "q.jsonl", chat_rows(8, "q"))
    p = cli("run", "--base-dir", base, "--once", check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    said = " ".join(p.stderr.split())  # the sentence may be wrapped
    missing = "bitsandbytes package" if importlib.util.find_spec("bitsandbytes") is None else "CUDA GPU"
    assert 'train.quantization = "4bit" needs' in said and missing in said, said
    assert 'set quantization = "none"' in said and str(base / "trainerd.toml") in said
    _no_job_claimed(base)
    # The same sentence from the worker itself (a worker started anyway would pause the
    # daemon with it rather than fail the job's attempts).
    assert quant.problem("4bit").split(";")[0] in said
    assert quant.problem("none") is None


def test_a_4bit_full_fine_tune_is_a_config_error(tmp_path, tiny_model):
    base = make_base(tmp_path / "b", tiny_model, '[train]\nmethod = "full"\nquantization = "4bit"\n')
    write_jsonl(base / "inbox" / "q.jsonl", chat_rows(8, "q"))
    p = cli("run", "--base-dir", base, "--once", check=False)
    assert p.returncode == 2
    said = " ".join(p.stderr.split())
    assert "train.quantization" in said and 'set method = "lora" or quantization = "none"' in said, said
    _no_job_claimed(base)
