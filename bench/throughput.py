"""Training throughput: trainerd's worker vs a plain Hugging Face Trainer + PEFT script.

Measures, side by side in one run, on the same tiny model, the same data and the same
settings (LoRA r/alpha/targets, learning rate and warmup, micro-batch size, 1 epoch, torch
threads, fp32 on the CPU):

  a  trainerd   `python -m trainerd.worker JOB_DIR --base-dir BASE`, started exactly as the
                supervisor starts it, with the default packing (padding-free
                DataCollatorWithFlattening). The base dir is laid out like tests/conftest.py
                make_base does, and the job goes in through Queue.submit + Queue.claim.
  b  plain HF   the script a user would write by hand (bench/plain_hf.py, its own process):
                apply_chat_template with the assistant-token mask, labels -100 elsewhere,
                DataCollatorForSeq2Seq padding, get_peft_model + Trainer.
  c  padded     trainerd's worker again, with `packing = false` in [train].
  e  HF flatten  b's script with DataCollatorWithFlattening (padding-free rows, position ids
                restarting per example; sdpa builds the block-diagonal mask) instead of
                padding: Hugging Face's own packing.
  g  HF grouped  b's script with `train_sampling_strategy="group_by_length"` (transformers
                5's name for the old `group_by_length=True`): LengthGroupedSampler puts
                examples of similar lengths in one padded batch, so little padding is
                computed. The best plain configuration on a CPU.
  d  2 procs    (only with --variants ...d) trainerd as a torchrun group of 2 processes
                (DDP over gloo, started by worker/launch.py as the supervisor does), each
                with half the threads and half the micro-batch: the same cores and the same
                effective batch as a, so d/a is the scaling of the group path on a CPU.

Columns: `real tok` non-pad tokens run (HF's rendering keeps one untrained newline a
conversation more than trainerd's; the trained-token count must be equal for all), `computed` tokens the
model actually ran (padding included), `steps` optimizer steps (must be equal), `tok/s`
real tokens per second of training (a, c: `tokens_per_s` of the job's last metrics.jsonl
row, timed by the worker from train begin; b, e, g: over the wall time of `trainer.train()`
only), `step p50` the median over steps of one step's real tokens / its wall time (less
sensitive to other processes stealing the CPU for part of a run), `process s` the whole
process (start-up, tokenization, model load, publish), the training loss (`final` = mean
of the last 10 steps, and the mean over the epoch: a and c train the same examples in the
same order, so they should agree; b, e, g shuffle, so they are only comparable in size), and
`others` the CPU cores that other processes used meanwhile (machine-wide /proc/stat minus
this benchmark): on a 2-core machine anything above ~0.2 makes that run's times unreliable.
Before each run it waits (up to --max-wait s) for the machine to go quiet.

Data: --examples chat examples (default 2,000) whose rendered lengths are spread uniformly
over --min-tokens..--max-tokens (20..400; deterministic --seed). Model: a random-init tiny
Qwen2 from trainerd.worker.tiny.build_tiny_model (no download). Variants run interleaved
(a, b, c, a, b, c for --repeat 2), so drift hits all alike; ratios use medians, and
`best` ratios compare each variant's fastest round (the one least disturbed by others).

Run from the repository root (about 4 minutes per round on 2 quiet cores):

    .venv/bin/python bench/throughput.py
    .venv/bin/python bench/throughput.py --variants abceg --repeat 3 --json bench/out/throughput.json
    .venv/bin/python bench/throughput.py --examples 300 --max-wait 0      # smoke test

Targets printed at the end: a/b >= 1.7 (the padding ceiling on this data: plain HF
computes ~1.7x the real tokens), a/e >= 1.05 and a/g >= 1.05 (trainerd beats Hugging
Face's own packing and its best padded configuration), a/c >= 1.0 (packing never costs:
with length-grouped micro-batches the padded worker pads little too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What the supervisor adds to a worker's environment (main() adds PYTHONPATH, see snapshot).
ENV = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
LAST_N = 10  # "final loss" = mean loss of the last LAST_N optimizer steps

WORDS = ["the river", "a small robot", "my neighbour", "the old library", "a quiet train",
         "the garden", "our team", "the first snow", "a paper boat", "the city lights"]
VERBS = ["watches", "remembers", "follows", "builds", "finds", "carries", "paints", "answers"]
OBJECTS = ["a long letter", "the morning light", "every small question", "a box of tools",
           "the last page", "an open window", "the quiet hills", "a map of the stars"]
QUESTIONS = ["What do you see?", "Tell me something.", "Describe the scene.", "What happens next?",
             "Can you explain?", "Say it simply."]


# --------------------------------------------------------------------------- setup
def snapshot(work: Path) -> str:
    """Copy this checkout's src/trainerd into the work dir and use that copy everywhere
    (this process, every worker), so edits to the tree during a long run cannot mix two
    versions of the code into one comparison. Returns the commit it was taken at."""
    dest = work / "src"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(ROOT / "src" / "trainerd", dest / "trainerd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(dest))
    ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(dest), os.environ.get("PYTHONPATH")]))

    def git(*args: str) -> str:
        p = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + uncommitted changes in src/" if git("status", "--porcelain", "--", "src") else "")


def build_model(out: Path, hidden_size: int, layers: int) -> dict:
    """Random init, no warm-up training: throughput does not depend on the weights."""
    import inspect

    from trainerd.worker.tiny import build_tiny_model

    params = inspect.signature(build_tiny_model).parameters
    no_warm = {"warm_steps": 0} if "warm_steps" in params else {"warm_seconds": 0}
    return build_tiny_model(out, hidden_size=hidden_size, layers=layers, **no_warm)


def make_data(path: Path, model_dir: Path, n: int, lo: int, hi: int, seed: int) -> list[int]:
    """`n` chat examples whose rendered token lengths are spread uniformly over [lo, hi]."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)

    def sentence() -> str:
        return f"{rng.choice(WORDS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."

    def render(msgs: list[dict]) -> int:
        return len(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])

    rows, lengths = [], []
    for _ in range(n):
        target = rng.randint(lo, hi)
        user = [rng.choice(QUESTIONS)]
        answer = [sentence()]
        user_share = rng.uniform(0.1, 0.6)
        while True:
            msgs = [{"role": "user", "content": " ".join(user)},
                    {"role": "assistant", "content": " ".join(answer)}]
            length = render(msgs)
            if length >= target:
                break
            step = max(1, (target - length) // 8)  # about 8 tokens a sentence: few renders
            for _ in range(step):
                (user if rng.random() < user_share else answer).append(sentence())
        rows.append({"messages": msgs})
        lengths.append(length)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return lengths


def trainerd_toml(model_dir: Path, a: argparse.Namespace, packing: bool, nproc: int = 1) -> str:
    # Everything else keeps trainerd's defaults (checkpoints, precision, scheduler). A group
    # of nproc processes splits the same threads and keeps the same effective batch.
    return (
        f'base_model = "{model_dir}"\n\n[train]\n'
        f"learning_rate = {a.lr}\nwarmup_steps = {a.warmup}\nmicro_batch_size = {a.micro_batch // nproc}\n"
        f"max_seq_len = {max(1024, a.max_tokens + 64)}\nthreads = {max(1, a.threads // nproc)}\n"
        f"nproc = {nproc}\npacking = {'true' if packing else 'false'}\n\n"
        f"[train.lora]\nr = {a.lora_r}\nalpha = {a.lora_alpha}\ndropout = 0.0\n"
        f'target_modules = "all-linear"\n'
    )


# --------------------------------------------------------------------------- a / c
def run_trainerd(base: Path, model_dir: Path, data: Path, a: argparse.Namespace, packing: bool,
                 nproc: int = 1) -> dict:
    """A base dir like tests/conftest.py make_base, a job claimed by the real queue, and the
    worker started the way the supervisor starts it."""
    from trainerd.config import load_config
    from trainerd.jobs import METRICS, Priority
    from trainerd.paths import Layout
    from trainerd.queue import Queue
    from trainerd.worker.data import CACHE, training_order

    layout = Layout.at(base)
    layout.ensure()
    layout.config.write_text(trainerd_toml(model_dir, a, packing, nproc))
    queue = Queue(layout, load_config(layout.config).queue)
    queue.submit(data)
    ref = queue.claim()
    assert ref is not None, "the job was not queued (validation failed?)"
    meta = queue.record_attempt_start(ref, None, Priority.NORMAL)

    log = ref.path / "worker.log"
    t0 = time.monotonic()
    with open(log, "wb") as f:  # started the way the supervisor starts it
        module = "trainerd.worker.launch" if nproc > 1 else "trainerd.worker"  # as the supervisor picks
        proc = subprocess.run([sys.executable, "-m", module, str(ref.path),
                               "--base-dir", str(layout.base)], stdin=subprocess.DEVNULL,
                              stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"worker exited {proc.returncode}; log:\n{log.read_text()[-4000:]}")
    rows = [json.loads(x) for x in (ref.path / METRICS).read_text().splitlines() if x.strip()]
    last = rows[-1]

    # Tokens the model actually ran (padding included), from the job's token cache and order.
    import numpy as np

    from trainerd.worker import tokcache

    _, trainable, offsets, _ = tokcache.load(ref.path / CACHE)
    lengths, targets = np.diff(offsets), int(trainable.sum())
    seed = (load_config(layout.config).train.seed ^ meta.seed) & 0x7FFFFFFF
    # The worker's own order (train.group_by_length on by default); a step = micro_batch examples.
    ordered = lengths[training_order(lengths, seed, a.micro_batch, True)]
    mb = a.micro_batch // nproc  # a group's rows are per rank; the sum is the same
    computed = int(ordered.sum()) if packing else \
        sum(len(ordered[i:i + mb]) * int(ordered[i:i + mb].max()) for i in range(0, len(ordered), mb))

    losses = [r["loss"] for r in rows]
    per_step = [(y["tokens_done"] - x["tokens_done"]) / (y["ts"] - x["ts"]) for x, y in pairwise(rows)]
    return {
        "real_tokens": last["tokens_done"], "steps": last["step"],
        "train_s": last["tokens_done"] / last["tokens_per_s"], "tokens_per_s": last["tokens_per_s"],
        "step_p50_tokens_per_s": statistics.median(per_step),
        "process_s": wall, "computed_tokens": computed, "target_tokens": targets,
        "final_loss": statistics.fmean(losses[-LAST_N:]), "mean_loss": statistics.fmean(losses),
    }


# --------------------------------------------------------------------------- b, e, g
def run_plain(work: Path, model_dir: Path, data: Path, a: argparse.Namespace, variant: str) -> dict:
    out = work / "result.json"
    spec = {"model": str(model_dir), "data": str(data), "out": str(work), "result": str(out),
            "lr": a.lr, "warmup": a.warmup, "micro_batch": a.micro_batch, "threads": a.threads,
            "r": a.lora_r, "alpha": a.lora_alpha, "seed": a.seed,
            "flatten": variant == "e", "group_by_length": variant == "g"}
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(work / "plain.log", "wb") as f:
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("plain_hf.py")), json.dumps(spec)],
                              stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, **ENV})
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"plain HF script exited {proc.returncode}; log:\n"
                         f"{(work / 'plain.log').read_text()[-4000:]}")
    return {**json.loads(out.read_text()), "process_s": wall}


# --------------------------------------------------------------------------- machine load
def _cpu() -> tuple[float, float, float] | None:
    """(monotonic time, CPU-seconds busy or stolen machine-wide, CPU-seconds of this process
    and its finished children); None where /proc/stat is not there."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return None
    busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")  # incl. steal
    own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))
    return time.monotonic(), busy, own


def other_load(before, after) -> float | None:
    """CPU cores kept busy by everything but this benchmark between two _cpu() samples."""
    if before is None or after is None:
        return None
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / max(1e-9, after[0] - before[0])


def wait_quiet(max_wait: float, threshold: float = 0.25, window: float = 3.0) -> float | None:
    """Wait (at most max_wait s) until other processes use under `threshold` cores."""
    deadline = time.monotonic() + max_wait
    while True:
        before = _cpu()
        time.sleep(window)
        load = other_load(before, _cpu())
        if load is None or load < threshold or time.monotonic() >= deadline:
            return load


# --------------------------------------------------------------------------- main
def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


NAMES = {"a": "trainerd (packed)", "b": "plain HF + PEFT", "c": "trainerd (padded)",
         "d": "trainerd 2 procs", "e": "HF flattening", "g": "HF group_by_len"}
PLAIN = "beg"  # the variants run by bench/plain_hf.py
TARGETS = (("a", "b", "trainerd vs plain HF", 1.7), ("a", "e", "vs HF flattening", 1.05),
           ("a", "g", "vs HF group_by_length", 1.05), ("a", "c", "packed vs padded", 1.0),
           ("d", "a", "2 procs vs 1 (same cores)", 1.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden-size", type=int, default=192)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--min-tokens", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the variants (interleaved)")
    ap.add_argument("--variants", default="abceg",
                    help="which of a, b, c, d, e, g to run, in this order (d: trainerd as a 2-process "
                         "torchrun group, gloo, each with half the threads and half the micro-batch; "
                         "e: plain HF with DataCollatorWithFlattening; g: plain HF padded with "
                         "train_sampling_strategy='group_by_length')")
    ap.add_argument("--max-wait", type=float, default=120,
                    help="before each run, wait up to this many seconds for other processes to "
                         "go quiet (0: do not wait); the load they caused is reported either way")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep files here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    a = ap.parse_args()
    if unknown := set(a.variants) - set(NAMES):
        ap.error(f"--variants: unknown {''.join(sorted(unknown))}; choose from {''.join(NAMES)}")

    work = a.work_dir or Path(tempfile.mkdtemp(prefix="trainerd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    code = snapshot(work)
    os.environ.update(ENV)
    import peft
    import torch
    import transformers

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}")
    print(f"trainerd: {code} (run from a copy in {work / 'src'})")
    model_dir = work / "model"
    info = build_model(model_dir, a.hidden_size, a.layers)
    data = work / "data.jsonl"
    lengths = make_data(data, model_dir, a.examples, a.min_tokens, a.max_tokens, a.seed)
    print(f"model: tiny Qwen2, hidden {a.hidden_size}, {a.layers} layers, {info['params']:,} params, "
          f"vocab {info['vocab']}; fp32, sdpa, {a.threads} threads")
    print(f"data: {len(lengths)} chat examples, {sum(lengths):,} tokens, length "
          f"min {min(lengths)} / median {int(statistics.median(lengths))} / max {max(lengths)}")
    print(f"train: LoRA r={a.lora_r} alpha={a.lora_alpha:g} all-linear, lr {a.lr:g} "
          f"(warmup {a.warmup}, constant), micro-batch {a.micro_batch}, 1 epoch = "
          f"{math.ceil(len(lengths) / a.micro_batch)} steps")
    print(f"work dir: {work}\n", flush=True)

    results: dict[str, list[dict]] = {v: [] for v in a.variants}
    for rep in range(a.repeat):
        for v in a.variants:
            print(f"run {rep + 1}/{a.repeat} {v}: {NAMES[v]} ...", end=" ", flush=True)
            where = work / f"{v}{rep + 1}"
            shutil.rmtree(where, ignore_errors=True)
            if a.max_wait > 0:
                wait_quiet(a.max_wait)
            before = _cpu()
            if v in PLAIN:
                r = run_plain(where, model_dir, data, a, v)
            else:
                r = run_trainerd(where, model_dir, data, a, packing=v != "c", nproc=2 if v == "d" else 1)
            r["other_load"] = other_load(before, _cpu())
            results[v].append(r)
            print(f"{r['tokens_per_s']:,.0f} tok/s, {r['process_s']:.1f} s"
                  + (f" (other processes: {r['other_load']:.2f} cores)" if r["other_load"] is not None else ""),
                  flush=True)

    print()
    hdr = (f"{'variant':<20}{'run':>4}{'real tok':>10}{'computed':>10}{'steps':>6}"
           f"{'train s':>9}{'tok/s':>9}{'step p50':>9}{'process s':>10}{'final loss':>11}"
           f"{'mean loss':>10}{'others':>7}")
    print(hdr)
    print("-" * len(hdr))
    for v, runs in results.items():
        for i, r in enumerate(runs):
            print(f"{v + ' ' + NAMES[v]:<20}{i + 1:>4}{r['real_tokens']:>10,}{r['computed_tokens']:>10,}"
                  f"{r['steps']:>6}{r['train_s']:>9.1f}{r['tokens_per_s']:>9,.0f}"
                  f"{r['step_p50_tokens_per_s']:>9,.0f}{r['process_s']:>10.1f}"
                  f"{r['final_loss']:>11.4f}{r['mean_loss']:>10.4f}"
                  f"{_fmt(r['other_load'], '.2f'):>7}")
    print()

    same = {k: sorted({r[k] for runs in results.values() for r in runs})
            for k in ("real_tokens", "target_tokens", "steps")}
    # Real tokens may differ by one a conversation: HF's rendering keeps the untrained newline
    # after the last <|im_end|>, trainerd's chat encoder ends there. Trained tokens must not.
    print(f"same work: trained (label) tokens {same['target_tokens']}, optimizer steps {same['steps']} -> "
          f"{'OK' if len(same['target_tokens']) == len(same['steps']) == 1 else 'MISMATCH'}; "
          f"real tokens {same['real_tokens']}")
    def median(key: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for v, runs in results.items():
            xs = [r[key] for r in runs if r[key] is not None]
            out[v] = statistics.median(xs) if xs else None
        return out

    def ratio(m: dict[str, float | None], num: str, den: str) -> float | None:
        return None if m[num] is None or m[den] is None else m[num] / m[den]

    tps, p50, wall = median("tokens_per_s"), median("step_p50_tokens_per_s"), median("process_s")
    best = {v: max(r["tokens_per_s"] for r in runs) if runs else None for v, runs in results.items()}
    print(f"ratios over {a.repeat} round(s) each (tokens/s: of medians, and of each variant's best round):")
    for num, den, label, target in TARGETS:
        if num in tps and den in tps:
            r = ratio(tps, num, den)
            print(f"  {num}/{den} {label:<26} tokens/s x{r:.2f} (target >= {target}: "
                  f"{'met' if r >= target else 'NOT met'}), best x{_fmt(ratio(best, num, den), '.2f')}; "
                  f"per-step p50 x{_fmt(ratio(p50, num, den), '.2f')}; "
                  f"whole process x{_fmt(ratio(wall, den, num), '.2f')}")
    if "a" in results and "c" in results:
        la, lc = results["a"][0]["final_loss"], results["c"][0]["final_loss"]
        print(f"loss a vs c (same examples, same order): final {la:.4f} vs {lc:.4f} "
              f"(diff {abs(la - lc):.2e})")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "code": code,
                                      "model": info, "results": results}, indent=1))
    if a.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
