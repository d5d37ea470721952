"""Checkpoint overhead: training time with the default cadence / with checkpoints off.

One job, same data and seed, run by the real worker twice in one run (interleaved when
repeated): once with trainerd's default [checkpoint] cadence (every 200 steps or 10
minutes) and once with checkpoints effectively off. Training time is taken from the
worker's own metrics (first to last step), plus whole-process wall time. Goal <= 1.03.

On a shared or loaded machine the two runs' times drift apart by more than the effect,
so the bench also reports an in-run estimate that needs no second run: in the default
run, each save lands between the step that triggered it and the next one; that gap minus
the median step gap is the save's cost.

    .venv/bin/python bench/checkpoint_overhead.py
    .venv/bin/python bench/checkpoint_overhead.py --examples 4000 --every-steps 50
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _jobs import chat_rows, make_base, make_job, run_worker

from trainerd.config import CheckpointConfig
from trainerd.worker.tiny import build_tiny_model


def toml(every_steps: int, every_minutes: float) -> str:
    return f"""
[train]
micro_batch_size = 4
max_seq_len = 512
threads = 2
[checkpoint]
every_steps = {every_steps}
every_minutes = {every_minutes}
"""


def in_run_overhead(rows: list[dict], every: int) -> tuple[float, float]:
    """(seconds spent saving, training seconds) from one run's per-step timestamps."""
    import statistics

    gaps = {r["step"]: r["ts"] - p["ts"] for p, r in zip(rows, rows[1:], strict=False)}
    typical = statistics.median(gaps.values())
    saves = sum(max(0.0, gaps[s + 1] - typical) for s in gaps if s % every == 0 and s + 1 in gaps)
    return saves, rows[-1]["ts"] - rows[0]["ts"]


def main() -> None:
    d = CheckpointConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=8000)
    ap.add_argument("--every-steps", type=int, default=d.every_steps)
    ap.add_argument("--every-minutes", type=float, default=d.every_minutes)
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="trainerd-ckpt-"))
    try:
        model = tmp / "model"
        build_tiny_model(model, warm_steps=0, hidden_size=a.hidden_size)
        rows = chat_rows(a.examples, seed=2)
        res: dict[str, list[dict]] = {"default": [], "off": []}
        for r in range(a.repeat):
            for name, t in (("default", toml(a.every_steps, a.every_minutes)), ("off", toml(10**9, 10**9))):
                job = make_job(make_base(tmp / f"{name}{r}", model, t), rows)
                run = run_worker(job)
                assert run["rc"] == 0, f"{name}: worker exit {run['rc']}"
                n_ckpt = sum(1 for x in (job / "worker.log").read_text().splitlines() if "checkpoint" in x.lower())
                train = run["rows"][-1]["ts"] - run["rows"][0]["ts"]
                res[name].append({"train": train, "wall": run["wall"], "steps": run["rows"][-1]["step"],
                                  "in_run": in_run_overhead(run["rows"], a.every_steps)})
                print(f"run {r + 1} {name:7s}: {run['rows'][-1]['step']} steps, train {train:.2f}s, "
                      f"process {run['wall']:.2f}s ({n_ckpt} log lines mention checkpoints)")
        best = {k: min(v, key=lambda x: x["train"]) for k, v in res.items()}
        steps = best["default"]["steps"]
        print(f"\n{a.examples} examples, {steps} steps, hidden {a.hidden_size}; checkpoint every {a.every_steps} "
              f"steps or {a.every_minutes:g} min -> {steps // a.every_steps} checkpoint(s)")
        print(f"train time default/off = {best['default']['train'] / best['off']['train']:.3f} "
              f"(process {best['default']['wall'] / best['off']['wall']:.3f}); goal <= 1.03")
        for r in res["default"]:
            saves, train = r["in_run"]
            print(f"in-run estimate (default run): {saves:.2f}s saving in {train:.2f}s training "
                  f"-> overhead {1 + saves / (train - saves):.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
