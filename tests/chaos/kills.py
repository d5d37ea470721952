"""Random SIGKILL campaign: kill the daemon or the worker at random moments, restart,
repeat until every job is done; check the invariants after every kill and, at the end of
each round, that the model equals an uninterrupted run's.

Moments: a random time; while Trainer writes a checkpoint (checkpoints/.staging exists);
while a version is being published (models/.tmp-*); the instant a worker exits (the
daemon is about to record the outcome and rename the job; for a warm worker, the instant
it reports a job done, between two of its jobs); just after a file is
delivered (the daemon is taking it in). Where the kill really landed is read back from
the disk afterwards (`harness.phase`) and counted.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from tests.chaos import invariants
from tests.chaos.harness import (
    Log,
    Reference,
    Scenario,
    Tally,
    all_done,
    check_against_reference,
    dead,
    deliver,
    frozen,
    in_rounds,
    kill_tree,
    log_tail,
    phase,
    quiet,
    start_daemon,
    stop_daemon,
    wait_for,
    workers,
)
from trainerd.paths import Layout

TARGETS = ("time", "checkpoint", "publish", "job_end", "ingest")
POLL = 0.005  # tight enough to land inside a checkpoint save of the tiny model


def _poll(pred, timeout: float, give_up) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if give_up():
            return False
        time.sleep(POLL)
    return False


class Round:
    """One base dir, one queue of files, kills until the budget or the queue runs out."""

    def __init__(self, sc: Scenario, model: Path, root: Path, rng, tally: Tally, log: Log):
        self.sc, self.rng, self.tally, self.log = sc, rng, tally, log
        self.base = sc.base(root, model)
        self.layout = Layout.at(self.base)
        self.exp = invariants.Expected()
        self.pending = list(sc.data())
        self.d = None
        self.killed_at = 0.0

    # -------------------------------------------------------------- delivery
    def deliver_next(self) -> bool:
        if not self.pending:
            return False
        name, data = self.pending.pop(0)
        deliver(self.base, name, data, self.exp)
        return True

    def finished(self) -> bool:
        return not self.pending and all_done(self.base, self.sc.files)

    def idle(self) -> bool:
        return not any(self.layout.active.iterdir()) and not any(
            any(self.layout.queued(p).iterdir()) for p in ("high", "normal", "low"))

    # -------------------------------------------------------------- moments
    def wait_moment(self, target: str) -> bool:
        """Wait for `target`; False when it did not come (the kill then lands where it is)."""
        r = self.rng
        a = self.layout.active
        if target == "time":
            time.sleep(r.uniform(0, 6))
            return True
        if target == "checkpoint":
            hit = _poll(lambda: any(a.glob("*/checkpoints/.staging/checkpoint-*")), 15, self.finished)
            time.sleep(r.uniform(0, 0.15))
            return hit
        if target == "publish":
            hit = _poll(lambda: any(p.name.startswith(".tmp-") for p in self.layout.models.iterdir()), 20,
                        self.finished)
            time.sleep(r.uniform(0, 0.1))
            return hit
        if target == "job_end":
            # A fresh worker exits; a warm one reports its job done and stays (its next job
            # is handed over within a moment): the kill lands between two of its jobs.
            _poll(lambda: workers(self.d.pid), 30, self.finished)
            ws = [w.pid for w in workers(self.d.pid)] or [None]
            hit = ws[0] is not None and _poll(
                lambda: dead(ws[0]) or any(a.glob("*/worker-outcome.json")), 30, self.finished)
            time.sleep(r.uniform(0, 0.05))
            return hit
        if target == "ingest":
            hit = self.deliver_next()
            time.sleep(r.uniform(0, 0.3))
            return hit
        raise ValueError(target)

    # -------------------------------------------------------------- one kill
    def kill_once(self, n: int) -> None:
        target = "ingest" if self.pending and (self.idle() or self.rng.random() < 0.2) else \
            self.rng.choice(TARGETS[:4])
        victim = "daemon" if target in ("ingest", "job_end") else self.rng.choice(("daemon", "worker"))
        hit = self.wait_moment(target)
        ws = workers(self.d.pid)
        if victim == "worker" and not ws:
            victim = "daemon"  # nothing training right now: the daemon is the only target
        self.tally.bump(f"target:{target}:{'hit' if hit else 'timeout'}")
        self.tally.bump(f"victim:{victim}")
        if victim == "worker":
            self._kill_worker(ws[0], n)
        else:
            self._kill_daemon(ws, n)

    def _kill_worker(self, w: psutil.Process, n: int) -> None:
        self.killed_at = time.time()
        try:
            w.kill()
        except psutil.NoSuchProcess:
            self.tally.bump("worker-already-gone")
        with frozen(self.d.pid):
            wait_for(lambda: dead(w.pid), timeout=20, what="killed worker gone")
            self._look(n, "worker")

    def _kill_daemon(self, ws: list[psutil.Process], n: int) -> None:
        self.killed_at = time.time()
        self.d.kill()
        self.d.wait()
        for w in ws:  # PR_SET_PDEATHSIG: the worker dies with its daemon
            wait_for(lambda w=w: dead(w.pid), timeout=20, what="worker gone with its daemon")
        self._look(n, "daemon")
        self.d = start_daemon(self.base)

    def _look(self, n: int, victim: str) -> None:
        for tag in phase(self.base, self.killed_at):
            self.tally.bump(f"landed:{tag}")
        problems = invariants.check(self.base, self.exp)
        if problems:
            self.tally.fail(f"kill {n} ({victim}) in {self.base}", problems + [invariants.dump(self.base)])
            self.log(f"VIOLATION after kill {n}: {problems}")

    # -------------------------------------------------------------- the round
    def run(self, kills: int, first: int, ref: Reference, timeout: float) -> int:
        self.deliver_next()
        self.deliver_next()
        self.d = start_daemon(self.base)
        done_kills = 0
        try:
            while done_kills < kills and not self.finished():
                self.kill_once(first + done_kills)
                done_kills += 1
            while self.deliver_next():
                pass
            wait_for(lambda: all_done(self.base, self.sc.files), timeout=timeout,
                     what=f"all {self.sc.files} jobs done in {self.base}\n{log_tail(self.base)}")
            rc = stop_daemon(self.d, self.base)
            if rc != 0:
                self.tally.fail(f"round {self.base}", [f"daemon exit {rc} on SIGTERM"])
        finally:
            kill_tree(self.d)
        self.finish(ref)
        return done_kills

    def finish(self, ref: Reference) -> None:
        problems = invariants.check(self.base, self.exp, final=True) + check_against_reference(self.base, ref)
        self.tally.bump("rounds")
        self.tally.bump("jobs_done", len(list(self.layout.done.iterdir())))
        self.tally.bump("set_aside_checkpoints", sum(
            (j / "worker.log").read_text(errors="replace").count("is not usable")
            for j in self.layout.done.iterdir() if (j / "worker.log").exists()))
        self.tally.bump("orphan_versions", len([v for v in self.layout.models.iterdir()
                                                if v.name.startswith("v")]) - self.sc.files)
        if problems:
            self.tally.fail(f"end of round {self.base}", problems + [invariants.dump(self.base)])


def campaign(model: Path, root: Path, ref: Reference, *, n: int, per_round: int = 20,
             seed: int | None = None, sc: Scenario | None = None, log: Log = quiet,
             timeout: float = 600) -> Tally:
    """`n` kills in rounds of at most `per_round`; returns the tally (violations must be [])."""
    tally, total = in_rounds(Round, model, root, ref, n=n, per_round=per_round, seed=seed, sc=sc, log=log,
                             timeout=timeout, what="kills")
    tally.counts["kills"] = total
    return tally
