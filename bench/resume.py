"""Resume cost: start-up-to-first-step of a resumed attempt / of a fresh one (goal <= 1.2).

A job of 20,000 chat examples. The fresh attempt tokenizes everything (and caches it);
it is warm-stopped after a few steps with a checkpoint. The resumed attempt loads the
verified token cache and the checkpoint, and Trainer skips the trained batches at the
sampler level (no example is re-read or re-tokenized). Measured: process start to the
first logged optimizer step, for both, in one run.

    .venv/bin/python bench/resume.py            # 20,000 examples
    .venv/bin/python bench/resume.py --examples 2000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _jobs import chat_rows, make_base, make_job, run_worker

from trainerd.worker.tiny import build_tiny_model

TOML = """
[train]
micro_batch_size = 8
max_seq_len = 512
threads = 2
[checkpoint]
every_steps = 1000
"""


def first_step_latency(run: dict) -> float:
    return run["rows"][0]["ts"] - run["start"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--stop-at", type=int, default=30, help="warm-stop the fresh attempt at this step")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="trainerd-resume-"))
    try:
        model = tmp / "model"
        build_tiny_model(model, warm_steps=0)
        rows = chat_rows(a.examples, seed=1)
        fresh, resumed = [], []
        for r in range(a.repeat):
            layout = make_base(tmp / f"base{r}", model, TOML)
            job = make_job(layout, rows)
            f = run_worker(job, stop_at_step=a.stop_at)
            assert f["rc"] == 3, f"fresh attempt should have stopped with a checkpoint (exit 3), got {f['rc']}"
            res = run_worker(job, stop_at_step=a.stop_at + 5)
            first = res["rows"][0]["step"]
            assert first == f["rows"][-1]["step"] + 1, (first, f["rows"][-1]["step"])
            fresh.append(first_step_latency(f))
            resumed.append(first_step_latency(res))
            print(f"run {r + 1}: fresh {fresh[-1]:.2f}s to step 1; resumed {resumed[-1]:.2f}s to step {first} "
                  f"(stopped at {f['rows'][-1]['step']})")
        f, res = min(fresh), min(resumed)
        print(f"\n{a.examples} examples; start-up to first step (best of {a.repeat}): "
              f"fresh {f:.2f}s, resumed {res:.2f}s; ratio resumed/fresh = {res / f:.2f} (goal <= 1.2)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
