"""Concurrency: 20 `trainerd run` started at once (exactly one daemon), then the real CLI's
`queue add` / `remove` / `move` from several threads racing that daemon while it claims
and trains. Every add that said "queued" is exactly one job; every remove that succeeded
is gone; every refused one is still there; nothing is lost or doubled, and no job is
trained twice into the model line.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

from tests.chaos import invariants
from tests.chaos.harness import Log, Tally, kill_tree, quiet, rng_for, stop_daemon, wait_for
from tests.conftest import chat_rows, cli, make_base, trainerd_cmd
from trainerd.lock import holder
from trainerd.paths import PRIORITIES, Layout

QUEUED = re.compile(r"queued (\S+)")


def start_many(base: Path, n: int) -> tuple[subprocess.Popen | None, list[str]]:
    """`n` daemons at once; returns the one left running and what went wrong."""
    procs = [subprocess.Popen([*trainerd_cmd(), "run", "--base-dir", str(base)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    problems: list[str] = []
    wait_for(lambda: sum(p.poll() is not None for p in procs) >= n - 1, timeout=180,
             what=f"{n - 1} of {n} daemons refused")
    time.sleep(1.0)  # a second winner would have had time to appear
    alive = [p for p in procs if p.poll() is None]
    losers = [p for p in procs if p.poll() is not None]
    if len(alive) != 1:
        problems.append(f"{len(alive)} daemons running, expected exactly 1")
    for p in losers:
        err = p.stderr.read() if p.stderr else ""
        if p.returncode != 3 or "already running (pid" not in err:
            problems.append(f"a refused start exited {p.returncode}: {err.strip()[-200:]}")
    h = holder(Layout.at(base).lock)
    if alive and (h is None or h.pid != alive[0].pid):
        problems.append(f"lock holder {h} is not the running daemon {alive[0].pid}")
    for p in alive[1:]:
        kill_tree(p)
    return (alive[0] if alive else None), problems


class Racer:
    """Random CLI operations from several threads; what each one said, remembered."""

    def __init__(self, base: Path, rng, exp: invariants.Expected, tally: Tally):
        self.base, self.rng, self.exp, self.tally = base, rng, exp, tally
        self.lock = threading.Lock()
        self.ids: dict[str, str] = {}  # job id -> file name, for every add that said queued
        self.n = 0

    def _file(self) -> tuple[Path, bytes]:
        with self.lock:
            self.n += 1
            n = self.n
        path = self.base.parent / "src" / f"racer-{n:04d}.jsonl"
        path.parent.mkdir(exist_ok=True)
        data = "".join(json.dumps(r) + "\n" for r in chat_rows(4, f"r{n}")).encode()
        path.write_bytes(data)
        return path, data

    def op(self, rng) -> None:
        with self.lock:
            known = list(self.ids)
        kind = "add" if not known or rng.random() < 0.45 else rng.choice(("remove", "move"))
        if kind == "add":
            path, data = self._file()
            p = cli("queue", "add", path, "--base-dir", self.base, check=False)
            m = QUEUED.search(p.stdout)
            self.tally.bump(f"add:{p.returncode}")
            if p.returncode != 0 or not m:  # a good file must always be taken
                self.tally.fail(f"add {path.name}", [f"exit {p.returncode}: {(p.stdout + p.stderr)[-300:]}"])
                return
            with self.lock:
                self.ids[m.group(1)] = path.name
                self.exp.add(path.name, data)
            return
        job = rng.choice(known)
        args = ("remove", job) if kind == "remove" else ("move", job, "-p", rng.choice(("high", "normal", "low")))
        p = cli("queue", *args, "--base-dir", self.base, check=False)
        self.tally.bump(f"{kind}:{'ok' if p.returncode == 0 else 'refused'}")
        if kind == "remove" and p.returncode == 0:
            with self.lock:
                self.exp.removed.add(self.ids.pop(job))
        elif p.returncode != 0 and not re.search(r"training|claimed|changed state|no job|is (active|done|failed)",
                                                 p.stdout + p.stderr):
            self.tally.fail(f"{kind} {job}", [f"refused without a reason a person can act on: {p.stderr[-300:]}"])

    def run(self, threads: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        seeds = [self.rng.randrange(2**31) for _ in range(threads)]

        def loop(s: int) -> None:
            import random

            r = random.Random(s)
            while time.monotonic() < deadline:
                self.op(r)

        ts = [threading.Thread(target=loop, args=(s,)) for s in seeds]
        for t in ts:
            t.start()
        for t in ts:
            t.join()


def campaign(model: Path, root: Path, *, rounds: int, starters: int = 20, threads: int = 3,
             seconds: float = 15, seed: int | None = None, log: Log = quiet) -> Tally:
    rng, seed = rng_for(seed, log)
    tally = Tally()
    tally.counts["seed"] = seed
    for r in range(1, rounds + 1):
        base = make_base(root / f"round{r:03d}" / "base", model, "[schedule]\nsnapshot_at = \"off\"\n")
        exp = invariants.Expected()
        d, problems = start_many(base, starters)
        tally.fail(f"round {r} start", problems)
        tally.bump("daemons_started", starters)
        if d is None:
            continue
        try:
            Racer(base, rng, exp, tally).run(threads, seconds)
            rc = stop_daemon(d, base)
            if rc != 0:
                tally.fail(f"round {r}", [f"daemon exit {rc} on SIGTERM"])
        finally:
            kill_tree(d)
        tally.fail(f"round {r} invariants", invariants.check(base, exp))
        layout = Layout.at(base)
        tally.bump("files_added", len(exp.files))
        tally.bump("jobs_done", len(list(layout.done.iterdir())))
        tally.bump("jobs_failed", len(list(layout.failed.iterdir())))
        tally.bump("jobs_waiting", sum(len(list(d.iterdir())) for d in
                                       (*(layout.queued(p) for p in PRIORITIES), layout.active)))
        log(f"round {r}: {tally.summary()['counts']}")
    tally.counts["rounds"] = rounds
    return tally
