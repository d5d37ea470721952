"""The first GPU: trainerd vs plain Hugging Face on a 0.5B-class model (run by bench/gpu.sh).

One run gives every figure a lent CUDA machine should produce, in under 10 minutes:
for bf16 LoRA, bf16 full fine-tune and QLoRA (4-bit base), real tokens/s, MFU, peak GPU
memory and checkpoint time, for trainerd's worker (started as the supervisor starts it,
on a job claimed from the real queue) with packing through each attention path that
ships with torch -- `packed_sdpa` (one SDPA call per packed example: the flash backend,
is_causal, no mask), `flex_attention` (one kernel over the packed row with a document
mask) and `sdpa` (transformers' dense block-diagonal mask, for reference) -- and for the
plain script a user writes (Trainer + PEFT or a full fine-tune, padded batches).

    bash bench/gpu.sh                          # on the GPU machine
    bash bench/gpu.sh --dry-run                # anywhere: tiny model, a few steps, the CPU

`--dry-run` runs the same code with Qwen2 at test size (bench/_qwen.py TINY) on a few
examples; variants that need CUDA (QLoRA) instead check that the daemon's preflight
refuses them with its sentence, as it does on a machine without a GPU.

MFU = achieved FLOP/s / the device's dense bf16 peak, with FLOPs per trained token =
6 N (full: forward 2N, backward 4N) or 4 N (LoRA and QLoRA: frozen weights need no
weight gradients), N = all parameters (the tied embedding counted once, as the output
layer), plus causal attention 6 L d T (full) or 4 L d T, T = the mean example length.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _qwen  # noqa: E402
from _jobs import ENV, chat_rows, make_base, make_job, run_worker  # noqa: E402

from trainerd.jobs import ExitCode  # noqa: E402

# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0,
               "RTX 4090": 165.2, "RTX 3090": 71.0, "V100": 125.0}


@dataclass(frozen=True)
class Variant:
    name: str
    runner: str  # "trainerd" or "plain"
    method: str  # "lora" or "full"
    attention: str = "packed_sdpa"
    quantization: str = "none"
    fsdp: bool = False  # FSDP2 over 2 GPUs (nproc = 2): needs a machine with 2 or more

    @property
    def needs_cuda(self) -> bool:
        # bitsandbytes' 4-bit kernels; FlexAttention has no backward on the CPU (torch says so).
        return self.quantization != "none" or self.attention in ("flex_attention", "varlen")


VARIANTS = [  # most wanted first: --budget-s skips from the end
    Variant("lora trainerd packed_sdpa", "trainerd", "lora"),
    Variant("lora plain HF padded", "plain", "lora", "sdpa"),
    Variant("lora trainerd varlen", "trainerd", "lora", "varlen"),
    Variant("full trainerd packed_sdpa", "trainerd", "full"),
    Variant("full plain HF padded", "plain", "full", "sdpa"),
    Variant("full trainerd varlen", "trainerd", "full", "varlen"),
    Variant("qlora trainerd packed_sdpa", "trainerd", "lora", quantization="4bit"),
    Variant("lora trainerd flex_attention", "trainerd", "lora", "flex_attention"),
    Variant("full trainerd flex_attention", "trainerd", "full", "flex_attention"),
    Variant("lora trainerd sdpa (dense mask)", "trainerd", "lora", "sdpa"),
    Variant("full trainerd FSDP2 2 GPUs", "trainerd", "full", fsdp=True),
]


def toml(v: Variant, a: argparse.Namespace) -> str:
    lr = 1e-5 if v.method == "full" else 2e-4
    group = 'nproc = 2\nfsdp = ["full_shard", "auto_wrap"]\n' if v.fsdp else ""
    mb = a.micro_batch // 2 if v.fsdp else a.micro_batch  # the same effective batch over 2 ranks
    return (f'[train]\nmethod = "{v.method}"\nattention = "{v.attention}"\nquantization = "{v.quantization}"\n'
            f"{group}micro_batch_size = {mb}\nmax_seq_len = 1024\nlearning_rate = {lr}\nwarmup_steps = 5\n"
            f"[checkpoint]\nevery_steps = {a.save_every}\n[eval]\nrecall_examples = 0\n"
            "[disk]\nmin_free_mb = 0\nwarn_free_mb = 0\ncheckpoint_multiple = 0\n")


def flops_per_token(params: int, shapes: dict, method: str, mean_len: float) -> float:
    k = 6 if method == "full" else 4
    return k * params + k * shapes["num_hidden_layers"] * shapes["hidden_size"] * mean_len


def run_trainerd(v: Variant, work: Path, model: Path, rows: list[dict], a: argparse.Namespace,
                 timeout: float) -> dict:
    layout = make_base(work, model, toml(v, a))
    job = make_job(layout, rows)
    resumed = ""
    if any(x and x in v.name for x in a.resume_check.split(",")):  # stop warm, then resume
        first = run_worker(job, stop_at_step=a.save_every, timeout=timeout / 2)
        if first["rc"] != ExitCode.STOPPED or not first["rows"]:
            return {"error": f"warm stop at step {a.save_every}: worker exited {first['rc']}"}
        resumed = f"stopped at step {first['rows'][-1]['step']}, "
        timeout -= first["wall"]
    out = run_group(job, layout.base, timeout) if v.fsdp else run_worker(job, timeout=timeout)
    log = (job / "worker.log").read_text()
    if out["rc"] != 0 or not out["rows"]:
        return {"error": f"worker exited {out['rc']}: " + " | ".join(log.strip().splitlines()[-3:])[-600:]}
    steps = out["rows"]
    if resumed:
        current = json.loads((layout.current_model / "manifest.json").read_text())
        resumed += (f"resumed at step {steps[0]['step']}; published {current['version']} "
                    f"({current['kind']} on {Path(current['base'] or '?').name})")
    prog = json.loads((job / "progress.json").read_text()) if (job / "progress.json").exists() else {}
    beat = json.loads((job / "heartbeat.json").read_text()) if (job / "heartbeat.json").exists() else {}
    # The worker's own clock of its checkpointing phases (Trainer's save + the commit).
    saves_s = beat.get("phase_seconds", {}).get("checkpointing", 0.0)
    n_saves = max(1, steps[-1]["step"] // a.save_every)
    per_step = [(y["tokens_done"] - x["tokens_done"]) / (y["ts"] - x["ts"]) for x, y in zip(steps, steps[1:], strict=False)]
    return {"tokens_per_s": steps[-1]["tokens_per_s"], "step_p50_tokens_per_s": statistics.median(per_step or [0]),
            "steps": steps[-1]["step"], "real_tokens": steps[-1]["tokens_done"], "final_loss": steps[-1]["loss"],
            "peak_gpu_bytes": prog.get("gpu_peak_bytes"), "checkpoint_s": saves_s / n_saves,
            "checkpoint_commit_s": prog.get("last_checkpoint_seconds"),
            "checkpoint_bytes": prog.get("last_checkpoint_bytes"), "process_s": out["wall"],
            **({"note": resumed} if resumed else {})}


def run_group(job: Path, base: Path, timeout: float) -> dict:
    """A torchrun group, started as the supervisor starts one (worker/launch.py)."""
    t0 = time.monotonic()
    with open(job / "worker.log", "ab") as log:
        try:
            p = subprocess.run([sys.executable, "-m", "trainerd.worker.launch", str(job), "--base-dir", str(base)],
                               env=ENV, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = -9
    metrics = job / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    return {"wall": time.monotonic() - t0, "rc": rc, "rows": rows}


def run_plain(v: Variant, work: Path, model: Path, rows: list[dict], a: argparse.Namespace, timeout: float) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    data, result = work / "data.jsonl", work / "result.json"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"model": str(model), "data": str(data), "out": str(work / "out"), "result": str(result),
            "method": v.method, "micro_batch": a.micro_batch, "lr": 1e-5 if v.method == "full" else 2e-4}
    t0 = time.monotonic()
    with open(work / "plain.log", "wb") as f:
        try:
            p = subprocess.run([sys.executable, __file__, "--_plain", json.dumps(spec)], stdout=f,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        tail = (work / "plain.log").read_text().strip().splitlines()[-3:]
        return {"error": f"plain script exited {p.returncode}: " + " | ".join(tail)[-600:]}
    return {**json.loads(result.read_text()), "process_s": time.monotonic() - t0}


def _plain_main(spec: dict) -> None:
    """What a competent user writes: chat template with assistant masks, padded batches,
    Trainer (+ PEFT for LoRA), bf16 on a GPU; one save timed as Trainer saves at save_steps."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    train = []
    for line in Path(spec["data"]).read_text().splitlines():
        enc = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids = list(enc["input_ids"])
        train.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                      "labels": [t if m else -100 for t, m in zip(ids, enc["assistant_masks"], strict=True)]})
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa")
    if spec["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=spec["out"], num_train_epochs=1, per_device_train_batch_size=spec["micro_batch"],
                             learning_rate=spec["lr"], lr_scheduler_type="constant_with_warmup", warmup_steps=5,
                             logging_steps=1, save_strategy="no", report_to=[], bf16=cuda, use_cpu=not cuda,
                             optim="adamw_torch_fused" if cuda else "adamw_torch", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    t0 = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - t0
    t1 = time.monotonic()
    trainer._save_checkpoint(trainer.model, trial=None)  # model + optimizer + scheduler + RNG, as at save_steps
    save_s = time.monotonic() - t1
    real = sum(len(x["input_ids"]) for x in train)
    Path(spec["result"]).write_text(json.dumps({
        "tokens_per_s": real / seconds, "steps": trainer.state.global_step, "real_tokens": real,
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        "peak_gpu_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None, "checkpoint_s": save_s}))


def quantization_refusal(model: Path) -> str:
    """What the daemon's preflight says of train.quantization = "4bit" on this machine."""
    p = subprocess.run([sys.executable, "-m", "trainerd.worker.preflight", "--weights", str(model),
                        "--tokenizer", str(model), "--quantization", "4bit"], capture_output=True, text=True, env=ENV)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return "" if out["ok"] else out["problem"]


def _fmt(x: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if x is None else format(x / scale, spec)


def report(results: list[dict], peak: float | None) -> None:
    print(f"\n{'variant':34} {'tok/s':>9} {'p50':>9} {'MFU':>6} {'peak GPU':>9} {'ckpt s':>7} "
          f"{'ckpt MB':>8} {'loss':>7}  note")
    for r in results:
        m = r.get("tokens_per_s")
        mfu = m * r["flops_per_token"] / peak if m and peak else None
        r["mfu"] = mfu
        print(f"{r['name']:34} {_fmt(m, ',.0f'):>9} {_fmt(r.get('step_p50_tokens_per_s'), ',.0f'):>9} "
              f"{_fmt(mfu, '.1%'):>6} {_fmt(r.get('peak_gpu_bytes'), '.2f', 2**30):>9} "
              f"{_fmt(r.get('checkpoint_s'), '.2f'):>7} {_fmt(r.get('checkpoint_bytes'), ',.0f', 1e6):>8} "
              f"{_fmt(r.get('final_loss'), '.3f'):>7}  {r.get('error') or r.get('skipped') or r.get('note') or ''}")
    by = {r["name"]: r.get("tokens_per_s") for r in results}
    for method in ("lora", "full"):
        base = by.get(f"{method} plain HF padded")
        for name, t in by.items():
            if name.startswith(f"{method} trainerd") and t and base:
                print(f"{name} / plain HF: {t / base:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny model, a few steps, on whatever device is here")
    ap.add_argument("--examples", type=int, default=None, help="default 2,000 (dry run: 12)")
    ap.add_argument("--micro-batch", type=int, default=None, help="default 8 (dry run: 4)")
    ap.add_argument("--save-every", type=int, default=None, help="checkpoint cadence in steps (default 50; dry run: 2)")
    ap.add_argument("--only", default="", help="comma-separated substrings: run only matching variants")
    ap.add_argument("--resume-check", default="qlora",
                    help="comma-separated substrings: these variants are stopped warm at --save-every and "
                         "resumed (QLoRA's checkpoints and resume, checked on the first GPU)")
    ap.add_argument("--budget-s", type=float, default=540, help="skip variants that would start after this")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: by name)")
    ap.add_argument("--work-dir", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--_plain", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._plain:
        return _plain_main(json.loads(a._plain))
    a.examples = a.examples or (12 if a.dry_run else 2000)
    a.micro_batch = a.micro_batch or (4 if a.dry_run else 8)
    a.save_every = a.save_every or (2 if a.dry_run else 50)
    t_start = time.monotonic()
    # Heartbeats often enough that heartbeat.json holds the last checkpoint's phase time.
    ENV["TRAINERD_HEARTBEAT_SECONDS"] = "0.25"
    os.environ.update(ENV)
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else "cpu"
    tflops = a.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None) if cuda else None
    print(f"device: {name}; torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
          f"{transformers.__version__}; peak {tflops or '?'} TFLOPS bf16")
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="trainerd-gpu-"))
    shapes = _qwen.TINY if a.dry_run else _qwen.QWEN25_05B
    info = _qwen.build(work / "model", shapes, dtype="bfloat16")
    rows = chat_rows(a.examples, seed=0, lo=5, hi=15 if a.dry_run else 120)
    tok = transformers.AutoTokenizer.from_pretrained(work / "model")
    mean_len = statistics.fmean(len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
                                for r in rows)
    print(f"model: Qwen2 {'TINY' if a.dry_run else '0.5B-class'}, {info['params']:,} params; "
          f"{len(rows)} examples, mean {mean_len:.0f} tokens; micro-batch {a.micro_batch}")
    results = []
    for i, v in enumerate(VARIANTS):
        row = {**asdict(v), "flops_per_token": flops_per_token(info["params"], shapes, v.method, mean_len)}
        results.append(row)
        if a.only and not any(s in v.name for s in a.only.split(",")):
            row["skipped"] = "not in --only"
            continue
        left = a.budget_s - (time.monotonic() - t_start)
        if left < 30:
            row["skipped"] = f"over the {a.budget_s:.0f} s budget"
            continue
        if v.fsdp and (torch.cuda.device_count() if cuda else 0) < 2:
            row["skipped"] = "needs 2 GPUs (FSDP shards over a group; CPU groups are refused)"
            continue
        if v.needs_cuda and not cuda:
            row["skipped"] = ("needs CUDA (FlexAttention has no backward on the CPU)" if v.attention == "flex_attention"
                              else "needs CUDA (torch's flash varlen kernel)")
            if v.quantization != "none":
                row["skipped"] = "refused here: " + (quantization_refusal(work / "model") or "NOT REFUSED")
            continue
        print(f"[{time.monotonic() - t_start:5.0f} s] {v.name} ...", flush=True)
        run = run_trainerd if v.runner == "trainerd" else run_plain
        row.update(run(v, work / f"v{i}", work / "model", rows, a, timeout=min(left, 240)))
    report(results, tflops * 1e12 if tflops else None)
    print(f"total {time.monotonic() - t_start:.0f} s")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"device": name, "model": info, "mean_len": mean_len, "results": results}, indent=1))


if __name__ == "__main__":
    main()
