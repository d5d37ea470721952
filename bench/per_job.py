"""Per-job overhead: N small files vs the same examples as one file, through the daemon.

    .venv/bin/python bench/per_job.py                          # tiny model, 10 x 100 vs 1 x 1000
    .venv/bin/python bench/per_job.py --model mid --files 4 --examples 8
    .venv/bin/python bench/per_job.py --warm-jobs 0            # the cold path: one worker per job

Each run is a fresh base dir: the files are renamed into inbox/ and `trainerd run --once`
is timed from its start to its exit on the empty queue (best of --repeat). The ratio
N files / one file is the per-job tax (goal <= 1.2). Then, from the N-file run, where a
job's time went: the worker's own spans (worker-timings.json: imports, model load,
tokenizer, data, parent scores, trainer setup, train, candidate scores, publish) and the
daemon's (spawn+interpreter: attempt recorded -> the worker's main() runs, or the hand-over
to a warm worker; exit: worker done -> attempt end recorded, the process's exit included for
a fresh worker; gap: attempt end recorded -> next attempt start recorded).

Models: `tiny` is worker/tiny.py's (hidden 64, 2 layers, ~175K parameters, warmed);
`mid` is the same tokenizer on a random-init Qwen2 of hidden 512, 8 layers (~30M
parameters), a model whose load is not free; `qwen0.5b` is bench/_qwen.py's random-init
model with Qwen2.5-0.5B's shapes (494M parameters, fp32 as the CPU trains it), with short
examples (3-20 words a turn, as bench/realsize.py's):

    .venv/bin/python bench/per_job.py --model qwen0.5b --files 4 --examples 8 --repeat 1 Replay is off (it adds examples to the N-file
run only) and the server is off; everything else is the default config.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jobs import ENV, chat_rows, make_base  # noqa: E402

from trainerd.paths import Layout  # noqa: E402
from trainerd.worker.tiny import build_tiny_model  # noqa: E402

TOML = """
[train]
threads = {threads}
warm_jobs = {warm_jobs}
[queue]
settle_seconds = 0
[server]
enabled = false
[replay]
fraction = 0
[eval]
recall_examples = {recall}
"""
MODELS = {"tiny": {"hidden_size": 64, "layers": 2, "warm_steps": 40},
          "mid": {"hidden_size": 512, "layers": 8, "warm_steps": 0},
          "qwen0.5b": {}}
WORKER_SPANS = ("imports", "resolve", "tokenizer", "data", "model_load", "parent_scores",
                "trainer_setup", "train", "candidate_scores", "publish")


def drop(layout: Layout, files: list[list[dict]]) -> None:
    for i, rows in enumerate(files):
        tmp = layout.base / f".f{i:03d}.jsonl"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.rename(tmp, layout.inbox / f"f{i:03d}.jsonl")


def run_once(root: Path, model: Path, files: list[list[dict]], toml: str) -> tuple[float, Layout]:
    shutil.rmtree(root, ignore_errors=True)
    layout = make_base(root, model, toml)
    drop(layout, files)
    t0 = time.monotonic()
    p = subprocess.run([str(Path(sys.executable).parent / "trainerd"), "run", "--once", "--base-dir", str(root)],
                       env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    done = list((layout.jobs / "done").iterdir()) if (layout.jobs / "done").is_dir() else []
    if p.returncode != 0 or len(done) != len(files):
        raise SystemExit(f"run --once exit {p.returncode}, {len(done)}/{len(files)} done:\n{p.stderr[-3000:]}")
    return wall, layout


def breakdown(layout: Layout) -> dict[str, list[float]]:
    """Per job: the worker's spans and the daemon's spawn/exit/gap, in claim order."""
    jobs = []
    for d in (layout.jobs / "done").iterdir():
        meta = json.loads((d / "job.json").read_text())
        a = meta["attempts"][-1]
        t = json.loads((d / "worker-timings.json").read_text())
        jobs.append((a["started_at"], a["ended_at"], t))
    jobs.sort(key=lambda j: j[0])
    out: dict[str, list[float]] = {}
    for i, (start, end, t) in enumerate(jobs):
        for k in WORKER_SPANS:
            out.setdefault(k, []).append(t["spans"].get(k, 0.0))
        out.setdefault("spawn+interpreter", []).append(t["started_at"] - start)
        out.setdefault("daemon: exit", []).append(end - t["ended_at"])
        if i + 1 < len(jobs):
            out.setdefault("daemon: gap", []).append(jobs[i + 1][0] - end)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--examples", type=int, default=100, help="examples per file")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm-jobs", type=int, default=None, help="train.warm_jobs (default: the config's)")
    ap.add_argument("--recall-examples", type=int, default=32,
                    help="eval.recall_examples (32, the default; 0: no forgetting matrix, no recall scoring)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="trainerd-perjob-"))
    try:
        model = tmp / "model"
        if a.model == "qwen0.5b":
            import _qwen

            _qwen.build(model, _qwen.QWEN25_05B, dtype="float32")
        else:
            build_tiny_model(model, **MODELS[a.model])
        toml = TOML.format(threads=a.threads, warm_jobs=a.warm_jobs, recall=a.recall_examples)
        if a.warm_jobs is None:
            toml = toml.replace("warm_jobs = None\n", "")
        rows = chat_rows(a.files * a.examples, seed=3, **({"lo": 3, "hi": 20} if a.model == "qwen0.5b" else {}))
        many = [rows[i * a.examples:(i + 1) * a.examples] for i in range(a.files)]
        best_many, best_one, layout, one = float("inf"), float("inf"), None, None
        for r in range(a.repeat):
            w1, lay1 = run_once(tmp / f"one{r}", model, [rows], toml)
            wn, lay = run_once(tmp / f"many{r}", model, many, toml)
            print(f"run {r + 1}: {a.files} files {wn:.1f} s, one file {w1:.1f} s", flush=True)
            if w1 < best_one:
                best_one, one = w1, lay1
            if wn < best_many:
                best_many, layout = wn, lay
        print(f"\nmodel {a.model}, {a.files} files x {a.examples} examples vs one file of {a.files * a.examples}")
        print(f"best of {a.repeat}: {a.files} files {best_many:.1f} s, one file {best_one:.1f} s, "
              f"ratio {best_many / best_one:.2f} (goal <= 1.2)")
        assert layout is not None and one is not None
        print(f"\nwhere the time went, seconds per job ({a.files}-file run: mean; first job; later jobs' mean;"
              " then the one-file run's job):")
        single = breakdown(one)
        for k, v in breakdown(layout).items():
            later = statistics.mean(v[1:]) if len(v) > 1 else float("nan")
            print(f"  {k:18s} {statistics.mean(v):7.3f}  {v[0]:7.3f}  {later:7.3f}  {single.get(k, [float('nan')])[0]:7.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
