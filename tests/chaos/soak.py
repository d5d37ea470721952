"""Soak: many small files dropped over a long run, with random pause / resume / skip /
stop commands (a stop is followed by a restart, as a person or systemd would). At the end
every file is done, or failed because a skip named it; the daemon's RSS is sampled over
each of its lives (start, end, max).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psutil

from tests.chaos import invariants
from tests.chaos.harness import (
    Log,
    Tally,
    deliver,
    kill_tree,
    quiet,
    rng_for,
    start_daemon,
    stop_daemon,
    up,
    wait_for,
)
from tests.conftest import chat_rows, cli, make_base
from trainerd.paths import Layout

SKIP_ID = re.compile(r"skip requested for (\S+)")


def _rss_mb(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        return None


class Soak:
    def __init__(self, base: Path, rng, tally: Tally, log: Log):
        self.base, self.rng, self.tally, self.log = base, rng, tally, log
        self.layout = Layout.at(base)
        self.exp = invariants.Expected()
        self.d = start_daemon(base)
        self.lives: list[list[float]] = [[]]

    def sample(self) -> None:
        if not up(self.base, self.d):  # from the first heartbeat on, not the bare interpreter
            return
        rss = _rss_mb(self.d.pid)
        if rss is not None:
            self.lives[-1].append(rss)

    def command(self) -> None:
        cmd = self.rng.choices(("pause", "resume", "skip", "stop"), weights=(3, 4, 2, 1))[0]
        p = cli(cmd, "--base-dir", self.base, check=False)
        self.tally.bump(f"cmd:{cmd}:{'ok' if p.returncode == 0 else 'refused'}")
        if cmd == "skip" and (m := SKIP_ID.search(p.stdout)):
            for name, _sha in self.exp.files.items():
                if m.group(1).endswith("-" + name[:-6]):
                    self.exp.may_fail.add(name)  # the user asked; done is fine too (it finished first)
        if cmd == "stop":
            rc = self.d.wait(300)
            if rc != 0:
                self.tally.fail("stop", [f"daemon exit {rc}"])
            self.d = start_daemon(self.base)  # `trainerd run` is itself a wish to run
            self.lives.append([])
            self.tally.bump("restarts")

    def run(self, files: int, seconds: float) -> None:
        t0 = time.monotonic()
        sent = 0
        next_cmd = t0 + self.rng.uniform(5, 30)
        while time.monotonic() - t0 < seconds:
            due = int(files * min(1.0, (time.monotonic() - t0) / (seconds * 0.8)))
            while sent < due:
                name = f"soak-{sent:05d}.jsonl"
                deliver(self.base, name, "".join(json.dumps(r) + "\n" for r in chat_rows(4, f"s{sent}")).encode(),
                        self.exp)
                sent += 1
            if time.monotonic() >= next_cmd:
                self.command()
                next_cmd = time.monotonic() + self.rng.uniform(5, 30)
            if self.d.poll() is not None:
                self.tally.fail("daemon", [f"exited {self.d.returncode} without being asked"])
                self.d = start_daemon(self.base)
                self.lives.append([])
            self.sample()
            time.sleep(1.0)
        self.tally.counts["files"] = sent

    def finish(self, timeout: float) -> None:
        cli("resume", "--base-dir", self.base)
        n = len(self.exp.files)
        try:
            wait_for(lambda: len(list(self.layout.done.iterdir())) + len(list(self.layout.failed.iterdir())) >= n,
                     timeout=timeout, interval=1.0, what="every soak file done or skipped")
        except AssertionError as e:
            self.tally.fail("finish", [str(e)[:300]])
        self.sample()
        rc = stop_daemon(self.d, self.base)
        if rc != 0:
            self.tally.fail("final stop", [f"daemon exit {rc}"])
        self.tally.fail("invariants", invariants.check(self.base, self.exp, final=True))
        self.tally.counts["done"] = len(list(self.layout.done.iterdir()))
        self.tally.counts["failed_by_skip"] = len(list(self.layout.failed.iterdir()))
        life = max(self.lives, key=len)
        if life:
            self.tally.counts["rss_mb_start"] = round(life[0], 1)
            self.tally.counts["rss_mb_end"] = round(life[-1], 1)
            self.tally.counts["rss_mb_max"] = round(max(life), 1)
            self.tally.counts["longest_life_samples"] = len(life)


def campaign(model: Path, root: Path, *, files: int, seconds: float, seed: int | None = None,
             log: Log = quiet, finish_timeout: float = 1800) -> Tally:
    rng, seed = rng_for(seed, log)
    tally = Tally()
    tally.counts["seed"] = seed
    base = make_base(root / "base", model, "[schedule]\nsnapshot_at = \"off\"\n[queue]\nmax_attempts = 100\n")
    s = Soak(base, rng, tally, log)
    try:
        s.run(files, seconds)
        s.finish(finish_timeout)
    finally:
        kill_tree(s.d)
    log(f"soak: {tally.summary()}")
    return tally
