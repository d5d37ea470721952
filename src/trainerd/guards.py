"""Resource guards: free disk space now; memory limits live in the worker's step loop.

The disk guard is consulted by the supervisor (before a job starts, and every tick while
one runs) and by the worker (before every checkpoint). Below the pause level the daemon
pauses *itself* — jobs are not failed — and resumes on its own when space returns.
The pause level is the larger of an absolute floor and a multiple of the newest
checkpoint's size, so a big model needs proportionally more headroom.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from trainerd.config import DiskConfig

MB = 1024 * 1024
# Test hook, documented: a file holding an integer that replaces the real free-space
# reading (for machines where a small filesystem cannot be mounted). Never set in production.
FAKE_FREE_ENV = "TRAINERD_FAKE_FREE_BYTES_FILE"


def free_bytes(path: Path) -> int:
    fake = os.environ.get(FAKE_FREE_ENV)
    if fake:
        try:
            return int(Path(fake).read_text().strip())
        except (OSError, ValueError):
            pass
    return shutil.disk_usage(path).free


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


@dataclass
class DiskReading:
    free: int
    pause_below: int
    warn_below: int

    @property
    def low(self) -> bool:
        return self.free < self.pause_below

    @property
    def warn(self) -> bool:
        return self.free < self.warn_below

    def message(self) -> str:
        return (f"only {self.free / MB:.0f} MB free on the base dir's filesystem; trainerd needs "
                f"{self.pause_below / MB:.0f} MB (disk.min_free_mb or disk.checkpoint_multiple x the "
                "last checkpoint). Free some space (old snapshots, logs, done jobs); training resumes "
                "on its own")


def reading(path: Path, cfg: DiskConfig, checkpoint_bytes: int = 0) -> DiskReading:
    pause = max(int(cfg.min_free_mb * MB), int(cfg.checkpoint_multiple * checkpoint_bytes))
    return DiskReading(free_bytes(path), pause, max(pause, int(cfg.warn_free_mb * MB)))
