"""Shared scaffolding for the benches: a base dir, an active job, a timed worker run.

The worker runs exactly as the daemon runs it (`python -m trainerd.worker JOB_DIR`), so
what is timed is the product, not a re-implementation of it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainerd.config import QueueConfig
from trainerd.paths import Layout
from trainerd.queue import Queue

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


def chat_rows(n: int, seed: int = 0, lo: int = 4, hi: int = 40) -> list[dict]:
    """Variable-length chat examples (word counts lo..hi per turn), deterministic."""
    rng = random.Random(seed)
    words = ["the", "a", "river", "robot", "library", "train", "garden", "team", "snow", "boat", "city", "light", "letter", "map"]

    def say(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    return [{"messages": [{"role": "user", "content": say(rng.randint(lo, hi))},
                          {"role": "assistant", "content": say(rng.randint(lo, hi))}]} for _ in range(n)]


def make_base(root: Path, model: Path, toml: str) -> Layout:
    layout = Layout.at(root)
    layout.ensure()
    layout.config.write_text(f'base_model = "{model}"\n{toml}')
    return layout


def make_job(layout: Layout, rows: list[dict], name: str = "bench.jsonl") -> Path:
    """Queue a file and claim it: returns the active job dir, ready for a worker."""
    src = layout.base / name
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    q = Queue(layout, QueueConfig())
    q.submit(src)
    ref = q.claim()
    q.record_attempt_start(ref, None, q.find(ref.id).priority or "normal")
    return ref.path


def run_worker(job: Path, stop_at_step: int | None = None, timeout: float = 3600) -> dict:
    """Run one attempt; optionally SIGTERM it (a warm stop) once it logs stop_at_step.
    Returns wall time, exit code, and the metrics rows this attempt wrote."""
    metrics = job / "metrics.jsonl"
    before = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    t0 = time.time()
    with open(job / "worker.log", "ab") as log:
        p = subprocess.Popen([sys.executable, "-m", "trainerd.worker", str(job)], env=ENV,
                             stdout=log, stderr=subprocess.STDOUT)
    while p.poll() is None:
        if stop_at_step is not None and metrics.exists():
            lines = metrics.read_text().splitlines()[before:]
            if lines and json.loads(lines[-1])["step"] >= stop_at_step:
                p.send_signal(signal.SIGTERM)
                stop_at_step = None
        if time.time() - t0 > timeout:
            p.kill()
        time.sleep(0.05)
    rows = [json.loads(x) for x in metrics.read_text().splitlines()[before:]] if metrics.exists() else []
    return {"start": t0, "wall": time.time() - t0, "rc": p.returncode, "rows": rows}
