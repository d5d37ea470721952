"""Peak memory of the tokenizing stage on a file with one huge line, per train.overlength.

    .venv/bin/python bench/long_line.py [--mb 50]

Builds the tiny model and a base dir, writes a file of 100 chat examples plus one
conversation whose assistant turn is --mb MB of text, and runs the daemon's tokenizing
code on it (`python -m trainerd.worker.tokenize --check`, the child `trainerd validate -b`
starts) once per policy, polling the child's RSS every 20 ms. The same file without the
huge line is the baseline. Before the character bound (issue 13) one 50 MB line grew the
worker to 9.7 GB before it was refused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import chat_rows, make_base  # noqa: E402
from trainerd.worker.tiny import build_tiny_model  # noqa: E402


def peak_rss(cmd: list[str]) -> tuple[float, str]:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    proc, peak = psutil.Process(p.pid), 0
    while p.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out = p.stdout.read() if p.stdout else ""
    return peak / 2**20, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        build_tiny_model(root / "model", warm_steps=0)
        rows = chat_rows(100)
        normal = root / "normal.jsonl"
        normal.write_text("".join(json.dumps(r) + "\n" for r in rows))
        huge = root / "huge.jsonl"
        big = {"messages": [{"role": "user", "content": "q"},
                            {"role": "assistant", "content": "word " * int(args.mb * 2**20 / 5)}]}
        huge.write_text("".join(json.dumps(r) + "\n" for r in rows[:50]) + json.dumps(big) + "\n"
                        + "".join(json.dumps(r) + "\n" for r in rows[50:]))
        print(f"file: 100 chat examples + one line of {huge.stat().st_size / 2**20:.0f} MB; "
              "peak RSS of `python -m trainerd.worker.tokenize --check`")
        for policy in ("fail", "drop", "truncate"):
            base = make_base(root / f"base-{policy}", root / "model", f'[train]\noverlength = "{policy}"\n')
            cmd = [sys.executable, "-m", "trainerd.worker.tokenize", "--check", "--base-dir", str(base)]
            for label, f in (("baseline (no huge line)", normal), ("with the huge line", huge)):
                t0 = time.monotonic()
                mib, out = peak_rss([*cmd, str(f)])
                v = json.loads(out.splitlines()[-1])
                verdict = "ok" if v["ok"] else "refused: " + v["reason"][:70]
                extra = f", {v['tokens']['dropped']} dropped, {v['tokens']['truncated']} truncated" if v["ok"] else ""
                print(f"  {policy:<9}{label:<25}{mib:>8.0f} MiB  {time.monotonic() - t0:5.1f}s  {verdict}{extra}")


if __name__ == "__main__":
    main()
