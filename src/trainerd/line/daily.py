"""The daily housework process: `python -m trainerd.line.daily --base-dir BASE
[--date YYYY-MM-DD]`, started by the daemon's scheduler (trainerd.schedule): the day's
snapshot, then retention. Both are attempted; the exit status says whether either failed."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

from trainerd.config import RetentionConfig, load_config
from trainerd.line.retention import gc
from trainerd.line.snapshots import snapshot
from trainerd.paths import Layout

log = logging.getLogger("trainerd.line.daily")


def daily(layout: Layout, day: str, policy: RetentionConfig) -> int:
    """Snapshot, then retention. Both are attempted; exit 1 if either failed."""
    rc = 0
    try:
        res = snapshot(layout, day, lock_timeout=600)
        log.info("snapshot %s: %s", day, json.dumps(res, default=str))
    except Exception as e:  # e.g. a damaged current version: gc still runs
        log.error("snapshot %s failed: %s", day, e)
        rc = 1
    try:
        plan = gc(layout, policy, dry_run=False, lock_timeout=600)
        log.info("gc: %d item(s), %d bytes freed%s", len(plan.delete), plan.freed,
                 "; errors: " + "; ".join(plan.errors) if plan.errors else "")
        rc = rc or (1 if plan.errors else 0)
    except Exception as e:
        log.error("gc failed: %s", e)
        rc = 1
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainerd.line.daily")
    ap.add_argument("--base-dir", type=Path, required=True)
    ap.add_argument("--date", default=None, help="the day of the snapshot (default: today)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    layout = Layout.at(args.base_dir)
    return daily(layout, args.date or dt.date.today().isoformat(), load_config(layout.config).retention)


if __name__ == "__main__":
    raise SystemExit(main())
