"""Full disk on a real size-limited filesystem (tmpfs): filled while a job trains, while
Trainer writes a checkpoint, while a version is published, and while a file is taken in.

Each time: the daemon pauses itself with the reason (run/status.json), nothing partial is
visible (every step-* checkpoint and every version verifies, every job.json parses, no
file lost or doubled), and once the filler is deleted it resumes on its own (no restart)
and finally trains everything to the same model as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from pathlib import Path

from tests.chaos import invariants
from tests.chaos.harness import (
    Log,
    Reference,
    Scenario,
    Tally,
    all_done,
    check_against_reference,
    deliver,
    kill_tree,
    log_tail,
    quiet,
    rng_for,
    start_daemon,
    stop_daemon,
    wait_for,
)
from tests.conftest import tmpfs
from trainerd import atomic
from trainerd.paths import Layout

TARGETS = ("training", "checkpoint", "publish", "ingest")
DISK_TOML = "[disk]\nmin_free_mb = 8\n"


def fill(path: Path, leave: int = 0) -> int:
    """Write zeros into `path` until only `leave` bytes are free (0: until ENOSPC)."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        chunk = 1 << 20
        while chunk >= 512:
            room = shutil.disk_usage(path.parent).free - leave
            if leave and room < chunk:
                if room < 512:
                    break
                chunk = room
            try:
                written += os.write(fd, b"\0" * chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return written


def shrink(filler: Path, leave: int) -> None:
    """Free space until `leave` bytes are free: a person deleting a little, not enough."""
    free = shutil.disk_usage(filler.parent).free
    size = os.path.getsize(filler)
    with open(filler, "r+b") as f:
        f.truncate(max(0, size - max(0, leave - free)))


def _status(layout: Layout) -> dict:
    try:
        return atomic.read_json(layout.status)
    except (OSError, ValueError):
        return {}


def nothing_partial(layout: Layout) -> list[str]:
    """Beyond invariants.check: every job.json parses, every version verifies."""
    out = []
    for d in (layout.active, layout.done, layout.failed, *(layout.queued(p) for p in ("high", "normal", "low"))):
        for job in d.iterdir():
            try:
                atomic.read_json(job / "job.json")
            except (OSError, ValueError) as e:
                out.append(f"{job.name}: job.json unreadable ({e})")
    for v in layout.models.iterdir():
        if v.name.startswith("v"):
            try:
                atomic.verify_manifest(v)
            except atomic.ManifestError as e:
                out.append(f"visible incomplete version {v.name}: {e}")
    return out


class DiskRound:
    def __init__(self, sc: Scenario, model: Path, fs: Path, rng, tally: Tally, log: Log):
        self.sc, self.rng, self.tally, self.log = sc, rng, tally, log
        self.base = sc.base(fs / "base", model)
        (self.base / "trainerd.toml").write_text((self.base / "trainerd.toml").read_text() + DISK_TOML)
        self.layout = Layout.at(self.base)
        self.filler = fs / "filler"
        self.exp = invariants.Expected()
        self.pending = list(sc.data())

    def _wait(self, target: str) -> bool:
        a, models = self.layout.active, self.layout.models
        preds = {
            "training": lambda: any(a.glob("*/progress.json")),
            "checkpoint": lambda: any(a.glob("*/checkpoints/.staging/checkpoint-*")),
            "publish": lambda: any(p.name.startswith(".tmp-") for p in models.iterdir()),
        }
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all_done(self.base, self.sc.files):
            if preds[target]():
                return True
            time.sleep(0.003)
        return False

    def event(self, target: str, n: int) -> None:
        if target == "ingest":
            if not self.pending:
                target = "training"
            else:
                _deliver_on_full_disk(self.base, *self.pending.pop(0), self.exp, self.filler)
        if target != "ingest":
            hit = self._wait(target)
            self.tally.bump(f"target:{target}:{'hit' if hit else 'missed'}")
            if not hit:
                return
            fill(self.filler, 0 if target in ("checkpoint", "publish") else self.rng.randrange(1, 7) << 20)
        if target != "training":
            # 100% full: the write in flight fails. Then a little is freed, still under the
            # floor, so the daemon has room to say why it paused.
            time.sleep(1.0)
            shrink(self.filler, self.rng.randrange(1, 7) << 20)
        paused = self._paused()
        self.tally.bump(f"paused:{target}" if paused else f"not_paused:{target}")
        problems = ([] if paused else [f"the daemon did not pause itself ({_status(self.layout).get('state')})"])
        problems += invariants.check(self.base, self.exp) + nothing_partial(self.layout)
        self.filler.unlink()
        problems += self._resumed()
        if problems:
            self.tally.fail(f"disk event {n} ({target})", problems + [log_tail(self.base, 20)])
            self.log(f"VIOLATION at disk event {n} ({target}): {problems}")

    def _paused(self) -> bool:
        try:
            # The reason is the guard's reading ("only N MB free ...") or the worker's own
            # account of the write that failed ("the disk filled up while writing ...").
            wait_for(lambda: _status(self.layout).get("state") == "paused_disk"
                     and (_status(self.layout).get("paused_reason") or "").strip(), timeout=60)
            return True
        except AssertionError:
            return False

    def _resumed(self) -> list[str]:
        try:
            wait_for(lambda: _status(self.layout).get("state") != "paused_disk", timeout=60,
                     what="resume after space returned")
        except AssertionError:
            return ["still paused 60 s after space returned"]
        return []

    def run(self, events: int, ref: Reference, timeout: float) -> None:
        for name, data in self.pending[:2]:
            deliver(self.base, name, data, self.exp)
        del self.pending[:2]
        d = start_daemon(self.base)
        try:
            for n in range(1, events + 1):
                if all_done(self.base, self.sc.files) and not self.pending:
                    break
                target = self.rng.choice(TARGETS)
                self.event(target, n)
                self.tally.bump("events")
            while self.pending:
                deliver(self.base, *self.pending.pop(0), self.exp)
            wait_for(lambda: all_done(self.base, self.sc.files), timeout=timeout,
                     what=f"all jobs done\n{log_tail(self.base)}")
            rc = stop_daemon(d, self.base)
            if rc != 0:
                self.tally.fail("stop", [f"daemon exit {rc}"])
        finally:
            kill_tree(d)
        self.tally.fail("end", invariants.check(self.base, self.exp, final=True)
                        + check_against_reference(self.base, ref))
        self.tally.bump("rounds")
        for job in self.layout.done.iterdir():  # how the worker reported each disk event
            for a in atomic.read_json(job / "job.json")["attempts"]:
                self.tally.bump(f"attempt:{a['outcome']}:{a.get('exit_code')}")


def _deliver_on_full_disk(base: Path, name: str, data: bytes, exp: invariants.Expected, filler: Path) -> None:
    """Written while there was room, renamed in once the disk is full (a rename needs no
    space): the daemon must take it in on a full disk."""
    inbox = Layout.at(base).inbox
    part = inbox / f".{name}.part"
    part.write_bytes(data)
    old = time.time() - 3600
    os.utime(part, (old, old))
    fill(filler)
    exp.add(name, data)
    part.rename(inbox / name)


def campaign(model: Path, root: Path, ref: Reference, *, events: int, rounds: int = 1,
             seed: int | None = None, sc: Scenario | None = None, size_mb: int = 24,
             log: Log = quiet, timeout: float = 600) -> Tally:
    sc = sc or Scenario()
    rng, seed = rng_for(seed, log)
    tally = Tally()
    tally.counts["seed"] = seed
    for r in range(1, rounds + 1):
        with tmpfs(root / f"fs{r}", size_mb, skip=False) as fs:
            try:
                DiskRound(sc, model, fs, rng, tally, log).run(events, ref, timeout)
            finally:  # the tmpfs goes with the round: keep what a post-mortem needs
                for name in ("daemon.out", "logs"):
                    src = fs / "base" / name
                    dst = root / f"fs{r}-{name}"
                    with contextlib.suppress(OSError):
                        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
        log(f"disk round {r}: {tally.summary()}")
    return tally
