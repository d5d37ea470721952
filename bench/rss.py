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


def memory(pid: int) -> dict[str, int]:
    """VmHWM (the kernel's peak resident set), and the resident set now split into
    anonymous memory (what grows if data is loaded) and file-backed pages (the memory-mapped
    cache and libraries: clean, shared, reclaimable by the kernel)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=0, help="size of the generated file (MB)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--model", type=Path, default=None, help="default: build the tiny model")
    ap.add_argument("--job", type=Path, default=None,
                    help="resume this job dir of an earlier run for --steps more steps (no tokenizing)")
    args = ap.parse_args()
    if args.job is not None:
        print(json.dumps({"resumed": str(args.job), **run(args.job, None, args.steps, resumed=True)}))
        return
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
    out = run(ref.path, src, args.steps)
    print(json.dumps({"file_mb": round(args.mb, 1), "examples": examples, "write_and_intake_s": round(intake_s, 1),
                      **out, "base": str(root)}))


def run(job: Path, src: Path | None, steps: int, resumed: bool = False) -> dict:
    start = 0
    if resumed:
        start = json.loads((job / "heartbeat.json").read_text()).get("step", 0)
    t1 = time.time()
    with open(job / "worker.log", "ab") as log:
        p = subprocess.Popen([sys.executable, "-m", "trainerd.worker", str(job)], env=ENV,
                             stdout=log, stderr=subprocess.STDOUT)
    peak: dict[str, int] = {}
    first_step_at, step = None, start
    while p.poll() is None:
        for k, v in memory(p.pid).items():
            peak[k] = max(peak.get(k, 0), v)
        try:
            hb = json.loads((job / "heartbeat.json").read_text())
            if hb.get("pid") == p.pid:
                step = hb.get("step", 0)
        except (OSError, ValueError):
            pass
        if step > start and first_step_at is None:
            first_step_at = time.time()
        if step >= start + steps:
            p.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    p.wait()
    cache = job / "tokens"
    mb = lambda k: round(peak.get(k, 0) / 2**20, 1)  # noqa: E731
    return {"steps": step - start, "peak_rss_mb (VmHWM)": mb("VmHWM"), "peak_anon_mb": mb("RssAnon"),
            "peak_file_backed_mb": mb("RssFile"),
            "token_cache_mb": round(sum(f.stat().st_size for f in cache.iterdir()) / 2**20, 1) if cache.is_dir() else None,
            "start_to_first_step_s": round((first_step_at or time.time()) - t1, 1), "exit": p.returncode}


if __name__ == "__main__":
    main()
