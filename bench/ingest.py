"""Inbox intake and `trainerd validate` throughput.

Full run (10,000 inbox files through the library and through a real paused daemon, then a
~1 GB file through `trainerd validate`):

    /work/main/.venv/bin/python bench/ingest.py

Quick run (a few seconds):

    /work/main/.venv/bin/python bench/ingest.py --files 500 --gb 0.05

What it measures:

(a) intake. N small valid JSONL files (3 chat examples each) are written into a fresh
    base dir's inbox/ the Maildir way (".name.jsonl.part", backdated so the settle time has
    passed, then renamed to "name.jsonl"), all before intake starts. Then
    `Queue(layout, QueueConfig(settle_seconds=0)).ingest()` is called until all N are in
    jobs/queued/normal/. Printed: ingest() calls, seconds, files/s (goal: N=10,000 in <= 10 s).

    Daemon variant (skip with --no-daemon): a second base dir whose trainerd.toml names a
    base_model that does not exist, paused with `trainerd pause` before the start, so the
    daemon only ingests and never trains. The N files are written as hidden .part files
    first, the daemon is started (`python -m trainerd.cli run --base-dir BASE`), and once
    it reports "paused" in run/status.json all N files are renamed into place at once.
    Printed: seconds from the first rename until jobs/queued/normal holds N entries, files/s,
    and the largest heartbeat age seen in run/status.json meanwhile (`trainerd status` says
    "NOT RESPONDING" past 5 heartbeats, 10 s by default). The daemon is then stopped with
    SIGTERM and its exit status printed.

(b) validate (skip with --gb 0). A ~GB JSONL file of chat examples (multi-turn, system
    prompts, non-ASCII text, some prompt/completion and text rows) is stream-written to a
    temp dir, then `python -m trainerd.cli validate FILE` runs in a subprocess. Printed:
    wall seconds, MB/s, CPU seconds and the peak RSS of that subprocess (from os.wait4, so
    it is that child's own peak, not the largest of all children). The file is deleted
    afterwards.

Temp dirs go under --tmp (default: the system temp dir) and are removed at the end
unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainerd.config import QueueConfig
from trainerd.paths import Layout
from trainerd.queue import Queue

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- data
_WORD_TEXT = (
    "the a model file queue train loss step data token batch example answer question why how "
    "when where which because therefore however python rust sql index table join network "
    "latency throughput memory disk cache kernel thread process signal checkpoint adapter "
    "gradient optimizer learning rate schedule warmup epoch shuffle seed deterministic "
    "café naïve résumé Zürich 東京 日本語 データ 模型 훈련 обучение модель 🙂 ✓ → ≤"
)
WORDS = _WORD_TEXT.split()

SYSTEMS = [
    "You are a helpful assistant.",
    "You are a concise technical support agent. Answer in at most three sentences.",
    "Tu es un assistant qui répond en français.",
    "",
]


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(lo, hi))
    return " ".join(words).capitalize() + rng.choice([".", "?", "!", ".\n\n```python\nprint('ok')\n```"])


def chat_example(rng: random.Random, i: int) -> dict:
    r = rng.random()
    if r < 0.05:
        return {"prompt": f"Q{i}: " + _sentence(rng, 5, 40), "completion": " " + _sentence(rng, 5, 80)}
    if r < 0.08:
        return {"text": _sentence(rng, 20, 200)}
    msgs = []
    system = rng.choice(SYSTEMS)
    if system:
        msgs.append({"role": "system", "content": system})
    for t in range(rng.choice([1, 1, 1, 2, 2, 3])):
        msgs.append({"role": "user", "content": f"[{i}.{t}] " + _sentence(rng, 5, 60)})
        msgs.append({"role": "assistant", "content": _sentence(rng, 10, 180)})
    return {"messages": msgs}


def example_lines(rng: random.Random, n: int, start: int = 0) -> list[bytes]:
    return [(json.dumps(chat_example(rng, start + k), ensure_ascii=False) + "\n").encode() for k in range(n)]


def drop_files(inbox: Path, n: int, rename: bool = True) -> list[tuple[Path, Path]]:
    """Write n small valid files as hidden .part files (backdated); rename them in if asked."""
    rng = random.Random(1)
    pool = example_lines(rng, 300)
    old = time.time() - 3600
    pairs = []
    for i in range(n):
        final = inbox / f"drop-{i:05d}.jsonl"
        part = inbox / f".{final.name}.part"
        with open(part, "wb") as f:
            f.write(b"".join(rng.choices(pool, k=3)))
        os.utime(part, (old, old))
        pairs.append((part, final))
    if rename:
        for part, final in pairs:
            os.rename(part, final)
    return pairs


def count(d: Path) -> int:
    try:
        with os.scandir(d) as it:
            return sum(1 for e in it if not e.name.startswith("."))
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------------- (a) intake
def bench_library(tmp: Path, n: int) -> None:
    base = tmp / "lib-base"
    layout = Layout.at(base)
    layout.ensure()
    t = time.perf_counter()
    drop_files(layout.inbox, n)
    print(f"  wrote {n} files in {time.perf_counter() - t:.2f}s")

    q = Queue(layout, QueueConfig(settle_seconds=0))
    calls, taken = 0, 0
    t0 = time.perf_counter()
    while count(layout.queued("normal")) < n:
        got = q.ingest()
        calls += 1
        taken += len(got)
        if not got:
            break  # nothing more to take: something went wrong, reported below
    dt = time.perf_counter() - t0
    queued, failed = count(layout.queued("normal")), count(layout.failed)
    print(f"  library: {queued}/{n} queued ({failed} failed) in {dt:.2f}s over {calls} ingest() "
          f"call(s) = {queued / dt:,.0f} files/s ({dt / max(queued, 1) * 1000:.2f} ms/file); "
          f"goal <= 10 s for 10,000: {'met' if queued == n and dt * 10_000 / n <= 10 else 'NOT met'}")


def bench_daemon(tmp: Path, n: int, timeout: float) -> None:
    base = tmp / "daemon-base"
    layout = Layout.at(base)
    layout.ensure()
    # Defaults, except a base model that does not exist: even a wrong resume cannot train.
    layout.config.write_text(f'base_model = "{tmp / "no-such-model"}"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [PY, "-m", "trainerd.cli"]
    subprocess.run([*cmd, "pause", "--base-dir", str(base), "--reason", "bench: ingest only"],
                   check=True, capture_output=True, env=env)
    t = time.perf_counter()
    pairs = drop_files(layout.inbox, n, rename=False)
    print(f"  wrote {n} hidden .part files in {time.perf_counter() - t:.2f}s")

    log = open(base / "daemon.out", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen([*cmd, "run", "--base-dir", str(base)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while _status(layout).get("state") != "paused":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not come up paused (rc {proc.poll()}):\n"
                                 + (base / "daemon.out").read_text()[-3000:])
            time.sleep(0.05)

        t0 = time.perf_counter()
        for part, final in pairs:
            os.rename(part, final)
        t_renamed = time.perf_counter() - t0
        max_hb_age, queued = 0.0, 0
        while time.perf_counter() - t0 < timeout:
            queued = count(layout.queued("normal"))
            hb = _status(layout).get("heartbeat_at")
            if hb:
                max_hb_age = max(max_hb_age, time.time() - hb)
            if queued >= n or proc.poll() is not None:
                break
            time.sleep(0.2)
        dt = time.perf_counter() - t0
        failed, active = count(layout.failed), count(layout.active)
        alive = proc.poll() is None
        print(f"  daemon:  renamed {n} files into inbox/ in {t_renamed:.2f}s; {queued}/{n} queued "
              f"({failed} failed, {active} active) {dt:.2f}s after the first rename = "
              f"{queued / dt:,.0f} files/s; largest heartbeat age seen {max_hb_age:.1f}s; "
              f"daemon {'alive' if alive else f'DIED rc {proc.returncode}'}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            t = time.perf_counter()
            try:
                rc = proc.wait(timeout=120)
                print(f"  daemon:  SIGTERM -> exit {rc} after {time.perf_counter() - t:.2f}s")
            except subprocess.TimeoutExpired:
                proc.kill()
                print("  daemon:  did not exit within 120 s of SIGTERM; killed")
        log.close()


def _status(layout: Layout) -> dict:
    try:
        return json.loads(layout.status.read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- (b) validate
def write_big_file(path: Path, target_bytes: int) -> tuple[int, int]:
    """Stream-write chat examples until target_bytes; returns (bytes, lines)."""
    rng = random.Random(2)
    pool = example_lines(rng, 4000)
    written = lines = 0
    with open(path, "wb") as f:
        while written < target_bytes:
            chunk = rng.choices(pool, k=2000)
            buf = b"".join(chunk)
            f.write(buf)
            written += len(buf)
            lines += len(chunk)
    return written, lines


def bench_validate(tmp: Path, gb: float) -> None:
    path = tmp / "big.jsonl"
    try:
        t = time.perf_counter()
        size, lines = write_big_file(path, int(gb * 1e9))
        print(f"  wrote {size / 1e6:,.0f} MB ({lines:,} examples) in {time.perf_counter() - t:.1f}s")
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        t0 = time.perf_counter()
        proc = subprocess.Popen([PY, "-m", "trainerd.cli", "validate", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        _pid, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.stdout:
            proc.stdout.close()
        print(f"  `trainerd validate` exit {proc.returncode}: {out.strip()[:300]}")
        print(f"  validate: {size / 1e6:,.0f} MB in {wall:.2f}s wall = {size / 1e6 / wall:,.1f} MB/s "
              f"({size / 2**20 / wall:,.1f} MiB/s); CPU user {ru.ru_utime:.2f}s + sys {ru.ru_stime:.2f}s; "
              f"peak RSS {ru.ru_maxrss / 1024:,.1f} MiB")
    finally:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000, help="inbox files to drop (0 = skip intake)")
    ap.add_argument("--gb", type=float, default=1.0, help="size of the validate file in GB (0 = skip)")
    ap.add_argument("--no-daemon", action="store_true", help="skip the real-daemon intake run")
    ap.add_argument("--daemon-timeout", type=float, default=600, help="give up on the daemon after this")
    ap.add_argument("--tmp", type=Path, default=None, help="where the temp dirs go")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="trainerd-bench-", dir=args.tmp)).resolve()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, temp dir {tmp}")
    try:
        if args.files:
            print(f"(a) intake of {args.files:,} inbox files")
            bench_library(tmp, args.files)
            if not args.no_daemon:
                bench_daemon(tmp, args.files, args.daemon_timeout)
        if args.gb > 0:
            print(f"(b) trainerd validate on a {args.gb:g} GB file")
            bench_validate(tmp, args.gb)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
