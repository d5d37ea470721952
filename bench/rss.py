"""Peak RSS of a worker training a few hundred steps of a big file and of a small one.

    .venv/bin/python bench/rss.py --mb 1024 --steps 300
    .venv/bin/python bench/rss.py --mb 10 --steps 300

The token cache is memory-mapped (worker/tokcache.py), so the worker's peak RSS should not
grow with the file. The worker runs as the daemon runs it; its VmHWM (the kernel's peak
resident set) is read from /proc while it runs, and it is stopped warm at --steps. Text
examples of random words (~1 KB each) with the tiny model; tokenizing the file is part of
the attempt (and of the peak).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jobs import ENV, make_base  # noqa: E402

from trainerd.config import QueueConfig  # noqa: E402
from trainerd.queue import Queue  # noqa: E402

WORDS = ["the", "a", "river", "robot", "library", "train", "garden", "team", "snow", "boat", "city", "light",
         "letter", "map", "code", "number", "alpha", "kappa", "blue", "seven"]


def write_data(path: Path, megabytes: float, seed: int = 0) -> int:
    rng = random.Random(seed)
    target, n = int(megabytes * 2**20), 0
    with open(path, "w") as f:
        while f.tell() < target:
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(180))}) + "\n")
            n += 1
    return n


def vm_hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--model", type=Path, default=None, help="default: build the tiny model")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trainerd-rss-"))
    model = args.model
    if model is None:
        from trainerd.worker.tiny import build_tiny_model

        model = root / "tiny"
        build_tiny_model(model, warm_steps=0)
    layout = make_base(root / "base", model, "[train]\nmicro_batch_size = 8\nmax_seq_len = 1024\n"
                       "overlength = \"truncate\"\nthreads = 1\n[checkpoint]\nevery_steps = 100\n"
                       "[queue]\nmax_file_mb = 8192\n[disk]\nmin_free_mb = 0\nwarn_free_mb = 0\n")
    src = root / "data.jsonl"
    t0 = time.time()
    examples = write_data(src, args.mb)
    q = Queue(layout, QueueConfig(max_file_mb=8192))
    q.submit(src, move=True)
    ref = q.claim()
    q.record_attempt_start(ref, None, "normal")
    intake_s = time.time() - t0
    job = ref.path
    t1 = time.time()
    with open(job / "worker.log", "ab") as log:
        p = subprocess.Popen([sys.executable, "-m", "trainerd.worker", str(job)], env=ENV,
                             stdout=log, stderr=subprocess.STDOUT)
    peak, first_step_at, step = 0, None, 0
    while p.poll() is None:
        peak = max(peak, vm_hwm(p.pid) or 0)
        try:
            step = json.loads((job / "heartbeat.json").read_text()).get("step", 0)
        except (OSError, ValueError):
            pass
        if step and first_step_at is None:
            first_step_at = time.time()
        if step >= args.steps:
            peak = max(peak, vm_hwm(p.pid) or 0)
            p.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    p.wait()
    cache = job / "tokens"
    print(json.dumps({
        "file_mb": round(src.stat().st_size / 2**20 if src.exists() else (job / "data.jsonl").stat().st_size / 2**20, 1),
        "examples": examples, "steps": step, "peak_rss_mb": round(peak / 2**20, 1),
        "token_cache_mb": round(sum(f.stat().st_size for f in cache.iterdir()) / 2**20, 1) if cache.is_dir() else None,
        "write_and_intake_s": round(intake_s, 1),
        "tokenize_and_load_s": round((first_step_at or time.time()) - t1, 1), "exit": p.returncode,
        "base": str(root),
    }))


if __name__ == "__main__":
    main()
