"""`[train] fsdp`: Trainer's FSDP (FSDP2 where torch has it) for full fine-tunes.

Not trainable with CPU processes: Trainer hands FSDP to accelerate, which drops its FSDP
plugin in a CPU (gloo) group and would train unsharded -- the second test shows that
for real, in a 2-process torchrun group, so that the day accelerate shards on the CPU
this test fails and the refusal can go. Until then trainerd refuses it at preflight,
before a job is claimed (first test), and the arguments are checked against the
installed transformers (last test).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd.config import ConfigError, TrainConfig, parse_config
from trainerd.paths import Layout
from trainerd.worker import fsdp

FSDP = '[train]\nmethod = "full"\nnproc = 2\nmicro_batch_size = 2\nfsdp = ["full_shard", "auto_wrap"]\n'


@pytest.mark.slow
def test_run_refuses_fsdp_without_gpus(tmp_path, tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("GPUs here: FSDP is allowed")
    base = make_base(tmp_path / "b", tiny_model, FSDP)
    write_jsonl(base / "inbox" / "f.jsonl", chat_rows(8, "f"))
    p = cli("run", "--base-dir", base, "--once", check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    said = " ".join(p.stderr.split())
    assert "train.fsdp is set but torch sees no CUDA GPU" in said and "set fsdp = []" in said, said
    layout = Layout.at(base)
    assert os.listdir(layout.inbox) == ["f.jsonl"] and not os.listdir(layout.active)


@pytest.mark.slow
def test_accelerate_drops_fsdp_in_a_cpu_group(tmp_path, tiny_model):
    """Why the refusal: the same arguments trainerd passes, in a real 2-process gloo group."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
        from trainerd.config import TrainConfig
        from trainerd.worker import fsdp
        torch.distributed.init_process_group("gloo")
        t = TrainConfig(method="full", nproc=2, fsdp=["full_shard", "auto_wrap"])
        args = TrainingArguments(output_dir={str(tmp_path / "out")!r}, use_cpu=True, report_to=[],
                                 **fsdp.arguments(t))
        model = AutoModelForCausalLM.from_pretrained({str(tiny_model)!r})
        trainer = Trainer(model=model, args=args, train_dataset=[])
        print("RESULT", os.environ["RANK"], trainer.is_fsdp_enabled, trainer.accelerator.distributed_type)
        try:
            fsdp.check_applied(trainer, t)
        except RuntimeError as e:
            print("REFUSED", e)
    """))
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(script)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    results = sorted(line for line in p.stdout.splitlines() if line.startswith("RESULT"))
    assert results == ["RESULT 0 False DistributedType.MULTI_CPU", "RESULT 1 False DistributedType.MULTI_CPU"]
    assert p.stdout.count("REFUSED train.fsdp = ['full_shard', 'auto_wrap'] was not applied") == 2


def test_fsdp_arguments_are_what_the_installed_trainer_takes(tmp_path):
    from transformers import TrainingArguments

    t = TrainConfig(method="full", nproc=2, fsdp=["shard_grad_op", "offload"])
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **fsdp.arguments(t))
    plugin = args.fsdp_plugin_args
    assert plugin["state_dict_type"] == "SHARDED_STATE_DICT"  # each rank saves its own shard
    assert plugin["fsdp_version"] == 2  # this torch has fully_shard
    assert plugin["reshard_after_forward"] is False and plugin["cpu_offload"] is True
    assert fsdp.arguments(TrainConfig()) == {}


@pytest.mark.parametrize("train, key, says", [
    ({"fsdp": ["full_shard"], "nproc": 2}, "train.fsdp", 'set method = "full"'),
    ({"method": "full", "fsdp": ["full_shard"]}, "train.fsdp", "nproc = 1 is one"),
])
def test_fsdp_config_errors(tmp_path, train, key, says):
    with pytest.raises(ConfigError) as e:
        parse_config({"base_model": "m", "train": train}, tmp_path / "t.toml")
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(key) and says in e.value.problems[0]
