"""Chaos campaigns, long runs (issue #9). The short CI versions are tests/chaos/; both run
the same code (tests/chaos/*.py) and check the same invariants (tests/chaos/invariants.py).

    .venv/bin/python bench/chaos.py --campaign kill --n 200          # random SIGKILLs
    .venv/bin/python bench/chaos.py --campaign fuzz --n 1000 --good 5
    .venv/bin/python bench/chaos.py --campaign concurrency --n 5     # rounds
    .venv/bin/python bench/chaos.py --campaign signals --n 30        # SIGTERM points
    .venv/bin/python bench/chaos.py --campaign disk --n 12           # full-disk events
    .venv/bin/python bench/chaos.py --campaign security
    .venv/bin/python bench/chaos.py --campaign soak --n 200 --minutes 15
    .venv/bin/python bench/chaos.py --campaign power --n 100     # power cuts (FUSE; root)

Every run prints its seed; `--seed S` replays it. The summary (counts, timings,
violations) is printed as JSON and written to --out. Exit status 1 if any invariant broke.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the campaigns live beside the tests that run them in CI

from tests.chaos import concurrency, disk, fuzz, kills, power, security, signals, soak  # noqa: E402
from tests.chaos.harness import Scenario, reference_run  # noqa: E402

CAMPAIGNS = ("kill", "fuzz", "concurrency", "signals", "disk", "security", "soak", "power")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tiny_model(work: Path) -> Path:
    from trainerd.worker.tiny import build_tiny_model

    out = work / "model"
    build_tiny_model(out, warm_steps=40)  # the same model tests/conftest.py builds
    return out


def run(args: argparse.Namespace, work: Path) -> dict:
    sc = Scenario(files=args.files, rows=args.rows)
    if args.campaign == "power":
        from tests.chaos.powerfs import unavailable

        if why := unavailable():
            raise SystemExit(f"power campaign cannot run here: {why}")
    model = tiny_model(work)
    if args.campaign == "security":
        return security.campaign(model, work, seed=args.seed, log=log).summary()
    if args.campaign == "fuzz":
        return fuzz.campaign(model, work, n_bad=args.n, n_good=args.good, seed=args.seed, log=log).summary()
    if args.campaign == "concurrency":
        return concurrency.campaign(model, work, rounds=args.n, seconds=args.seconds, seed=args.seed,
                                    log=log).summary()
    if args.campaign == "soak":
        return soak.campaign(model, work, files=args.n, seconds=args.minutes * 60, seed=args.seed,
                             log=log).summary()
    log("reference: the same queue without interruption")
    ref = reference_run(sc, model, work)
    if args.campaign == "kill":
        return kills.campaign(model, work, ref, n=args.n, per_round=args.per_round, seed=args.seed, sc=sc,
                              log=log).summary()
    if args.campaign == "power":
        return power.campaign(model, work, ref, n=args.n, per_round=args.per_round, seed=args.seed, sc=sc,
                              log=log).summary()
    if args.campaign == "signals":
        return signals.campaign(model, work, ref, points=args.n, seed=args.seed, sc=sc, log=log).summary()
    return disk.campaign(model, work, ref, events=args.n, rounds=args.rounds, seed=args.seed, sc=sc,
                         log=log).summary()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--campaign", choices=CAMPAIGNS, required=True)
    ap.add_argument("--n", type=int, default=20, help="kills / bad files / rounds / points / events / files / cuts")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--files", type=int, default=5, help="queue length of kill/signals/disk")
    ap.add_argument("--rows", type=int, default=24, help="examples per file of kill/signals/disk")
    ap.add_argument("--per-round", type=int, default=20, help="kills or cuts per queue (kill, power)")
    ap.add_argument("--rounds", type=int, default=1, help="filesystems (disk)")
    ap.add_argument("--good", type=int, default=5, help="good files among the fuzzed ones")
    ap.add_argument("--seconds", type=float, default=30, help="racing time per round (concurrency)")
    ap.add_argument("--minutes", type=float, default=15, help="soak duration")
    ap.add_argument("--work-dir", type=Path, default=None, help="kept afterwards (default: a temp dir, removed)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    args = ap.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix=f"trainerd-chaos-{args.campaign}-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    summary = run(args, work)  # on an exception the work dir stays, for the post-mortem
    if args.work_dir is None and not summary["violations"]:
        shutil.rmtree(work, ignore_errors=True)
    elif summary["violations"]:
        log(f"violations: base dirs kept under {work}")
    summary.update(campaign=args.campaign, n=args.n, seconds=round(time.monotonic() - t0),
                   command="bench/chaos.py " + " ".join(sys.argv[1:]))
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
