"""History at scale: status, /api/status, /api/jobs and `models list` with months of history.

    .venv/bin/python bench/history_scale.py                  # 10,000 done jobs, 500 versions
    .venv/bin/python bench/history_scale.py --jobs 2000 --versions 100 --repeat 5

Builds three base dirs synthetically (no training): 1 finished job and 1 version (the
baseline), 100 jobs and 60 versions (every page as full as in the large one), and --jobs
finished jobs with --versions versions; each with the job.json, ledger events (state.db)
and manifests the daemon would have written. Finish order differs from
arrival order on purpose (every 7th job finishes late), as after requeues.

Then, for each base dir, the median of --repeat runs of:
- `trainerd status` and `trainerd models list` (real processes: what a person waits for),
- GET /api/status, /api/jobs (default page), /api/jobs?state=done&limit=25, /api/models
  from the real HTTP server (start_server), first request excluded (cold caches).
Printed: seconds for each base dir, and the large one's ratio to the 1-job baseline (goal
for status: <= 2) and to the full-page one (a list costs its page, not the history).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_780_000_000.0  # a fixed start: the ids and times are the same on every run


def build(base: Path, jobs: int, versions: int) -> Path:
    """A base dir with `jobs` finished jobs and `versions` model versions, made directly."""
    from trainerd import atomic
    from trainerd.bootstrap import init_base
    from trainerd.history import TRAINED_EVENT
    from trainerd.jobs import Attempt, JobMeta, Outcome
    from trainerd.ledger import Ledger
    from trainerd.paths import Layout
    from trainerd.queue import save_meta  # the queue writes job.json, as the daemon would have

    init_base(base, base_model="unused-model")
    layout = Layout.at(base)
    events: list[tuple] = []
    for i in range(jobs):
        arrived = T0 + i * 60
        finished_at = arrived + (3600 * 24 if i % 7 == 0 else 30)  # every 7th finishes a day late
        t = time.gmtime(arrived)
        job_id = f"{time.strftime('%Y%m%dT%H%M%S', t)}-{i % 1_000_000:06d}-file{i}.jsonl"
        d = layout.done / job_id
        d.mkdir(parents=True)
        save_meta(d, JobMeta(id=job_id, original_name=f"file{i}.jsonl", sha256="0" * 64, size=100, examples=8,
                             submitted_at=arrived, examples_done=8, steps_done=2, first_loss=2.5, last_loss=1.9,
                             attempts=[Attempt(number=1, started_at=finished_at - 20, ended_at=finished_at,
                                               outcome=Outcome.FINISHED, exit_code=0)]), sync=False)
        version = f"v{min(versions, 1 + i * versions // max(jobs, 1)):04d}" if versions else None
        events += [(arrived, job_id, "queued", "{}"), (finished_at - 20, job_id, "attempt_start", "{}"),
                   (finished_at, job_id, "attempt_end", '{"outcome": "finished"}'),
                   (finished_at, job_id, TRAINED_EVENT, json.dumps({"examples_done": 8, "version": version,
                                                                     "train_seconds": 20})),
                   (finished_at, job_id, "done", "{}")]
    Ledger(layout.state_db).close()  # the schema, indexes included
    con = sqlite3.connect(layout.state_db)
    with con:
        con.executemany("INSERT INTO events (ts, job_id, kind, data) VALUES (?, ?, ?, ?)",
                        sorted(events, key=lambda e: e[0]))  # ids in time order, as the daemon writes
    con.close()
    import hashlib

    weights = b"x" * 64
    sha = hashlib.sha256(weights).hexdigest()
    for n in range(1, versions + 1):
        name = f"v{n:04d}"
        d = layout.models / name
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(weights)
        atomic.write_json(d / atomic.MANIFEST, {
            "version": name, "kind": "adapter", "parent": f"v{n - 1:04d}" if n > 1 else "base",
            "base": "unused-model", "created_at": T0 + n * 3600, "jobs": [{"id": f"job{n}", "name": f"file{n}"}],
            "files": {"adapter_model.safetensors": {"size": len(weights), "sha256": sha}}}, sync=False)
    if versions:
        os.symlink(f"v{versions:04d}", layout.current_model)
    return base


def _median(fn, repeat: int) -> float:
    fn()  # warm: the first request fills caches and imports
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(base: Path, repeat: int) -> dict[str, float]:
    from trainerd.config import ServerConfig
    from trainerd.paths import Layout
    from trainerd.web.server import start_server

    cli = [sys.executable, "-m", "trainerd.cli"]
    out: dict[str, float] = {}
    for name, args in (("trainerd status", ["status"]), ("trainerd models list", ["models", "list"])):
        out[name] = _median(lambda a=args: subprocess.run([*cli, *a, "--base-dir", str(base)], check=True,
                                                          capture_output=True), repeat)
    h = start_server(Layout.at(base), ServerConfig(port=0), time.time)
    try:
        for path in ("api/status", "api/jobs", "api/jobs?state=done&limit=25", "api/models"):
            out["GET /" + path] = _median(lambda p=path: urllib.request.urlopen(h.url + p, timeout=60).read(),
                                          repeat)
    finally:
        h.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--versions", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    # Three base dirs: 1 job (the baseline the goal names), a full page (100 jobs, 60
    # versions: every list shows as many rows as in the large one), and the large one.
    sizes = {"1 job": (1, 1), "1 page": (100, 60), f"{args.jobs} jobs": (args.jobs, args.versions)}
    with tempfile.TemporaryDirectory(prefix="trainerd-history-") as tmp:
        t = time.perf_counter()
        bases = {k: build(Path(tmp) / f"b{i}", *v) for i, (k, v) in enumerate(sizes.items())}
        print(f"built {', '.join(f'{k} ({v[1]} versions)' for k, v in sizes.items())} in "
              f"{time.perf_counter() - t:.1f}s")
        got = {k: measure(b, args.repeat) for k, b in bases.items()}
    one, page, large = got.values()
    print(f"{'what':34} {'1 job':>8} {'1 page':>8} {list(sizes)[2]:>11} {'/1 job':>7} {'/1 page':>8}")
    for k in one:
        print(f"{k:34} {one[k]:8.4f} {page[k]:8.4f} {large[k]:11.4f} {large[k] / one[k]:7.2f} "
              f"{large[k] / page[k]:8.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
