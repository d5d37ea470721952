"""Power-cut campaign (issue 20): the whole base dir on powerfs (a disk with a volatile
cache, tests/chaos/powerfs), cut at random moments and at the dangerous ones, remounted
with only what was durable, the daemon restarted, until the queue is done.

Moments: a random time; N requests into a checkpoint commit, a publish, an intake (a
rename out of the inbox), a job rename between state folders, a ledger (state.db) write,
a rollback (`models rollback`, run while the daemon is idle, then undone), a snapshot.
The filesystem itself cuts at an armed moment, between two requests, so a cut lands
inside the few milliseconds of a rename sequence as easily as between jobs. Each cut
loses every pending write (mode `all`), or keeps a prefix or a dependency-closed subset
of them with torn files (`prefix`, `subset`).

Checked after every cut, on what survived, before the restart (invariants.check): every
delivery in exactly one place with its bytes; acknowledged ones (the daemon said
"queued" in its output, kept off the cut filesystem, or `queue add` returned) never back
in the inbox or lost; every visible checkpoint and version verifies; the line is
consistent; state.db opens (or the restarted daemon says it rebuilt it). At the end of a
round: everything done once, the weights allclose to the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
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
    in_rounds,
    quiet,
    stop_daemon,
    up,
    wait_for,
)
from tests.chaos.powerfs import PowerMount
from tests.conftest import poll, start_daemon, trainerd_cmd
from trainerd import atomic
from trainerd.paths import Layout

# moment -> (request kinds, path pattern (relative to the mount), most requests after the match)
MOMENTS: dict[str, tuple[list[str], str, int]] = {
    "checkpoint": (["create", "fsync", "fsyncdir", "rename", "unlink"], r"/checkpoints/(\.staging/checkpoint-|step-)", 80),
    "publish": (["mkdir", "create", "fsync", "fsyncdir", "rename", "symlink"], r"/models/(\.tmp-|\.current-|v\d)", 80),
    "intake": (["rename", "mkdir", "create", "fsync", "fsyncdir"], r"^/base/(inbox/[^.]|jobs/\.incoming/)", 30),
    "job_rename": (["rename"], r"/jobs/(queued/\w+|active|done|failed)/\d{8}T[^/]*$", 4),
    "ledger": (["write", "fsync"], r"/state\.db(-wal|-journal)?$", 8),
    "rollback": (["symlink", "rename", "fsyncdir"], r"/models/(\.current-|current$)", 4),
    "snapshot": (["mkdir", "create", "fsync", "fsyncdir", "rename"], r"/snapshots/", 60),
}
TRAINING = ("time", "checkpoint", "publish", "job_rename", "ledger")
MODES = ("all", "all", "prefix", "subset")  # half the cuts lose everything pending
ACK = re.compile(r"(\S+\.jsonl): queued as ")


class Round:
    """One powerfs, one queue of files, cuts until the budget or the queue runs out."""

    def __init__(self, sc: Scenario, model: Path, root: Path, rng, tally: Tally, log: Log):
        self.sc, self.rng, self.tally, self.log = sc, rng, tally, log
        self.root = root
        self.fs = PowerMount(root)
        self.fs.start()
        self.base = sc.base(self.fs.mount / "base", model)
        self.fs.sync()  # what `trainerd init` and a `sync` leave: the starting disk
        self.layout = Layout.at(self.base)
        self.out = root / "daemon.out"  # off the cut filesystem: acknowledgements survive
        self.exp = invariants.Expected()
        self.pending = list(sc.data())
        self.d: subprocess.Popen | None = None
        self.cli: subprocess.Popen | None = None
        self.day = 0
        self.line_cuts = 0
        self.restore: str | None = None  # the version to roll forward to after a rollback cut
        self.retry_add: tuple[str, bytes] | None = None  # a `queue add` the cut ended unanswered

    # -------------------------------------------------------------- deliveries
    def deliver_next(self, arm=None, inbox_only: bool = False) -> bool:
        """The next file, durably (written, fsynced, renamed in, folder fsynced: a careful
        sender), to the inbox; one in three through `queue add` instead. `arm` is called
        once the sender is done (inbox), or before the `queue add` runs (its work is part
        of the moment: until it answers, nothing is promised)."""
        if not self.pending:
            return False
        name, data = self.pending.pop(0)
        if not inbox_only and self.rng.random() < 1 / 3:
            # Files queue in the order they arrive: an inbox file arrives when the daemon
            # takes it, so the next file is added only after that (the line's order must
            # be the uninterrupted run's).
            wait_for(lambda: not self._in_inbox(), timeout=300, what=f"the inbox taken in\n{self._tail()}")
            if arm:
                arm()
            self._queue_add(name, data)
            return True
        inbox = self.layout.inbox
        tmp = inbox / f".{name}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            old = time.time() - 3600  # already settled
            os.utime(fd, (old, old))
            os.fsync(fd)
        finally:
            os.close(fd)
        if name not in self.exp.files:
            self.exp.add(name, data)
        os.rename(tmp, inbox / name)
        atomic.fsync_dir(inbox)
        if arm:
            arm()
        return True

    def _in_inbox(self) -> bool:
        return any(not n.startswith(".") for n in os.listdir(self.layout.inbox))

    def _queue_add(self, name: str, data: bytes) -> None:
        src = self.root / "outside" / name  # the user's copy, never on the cut filesystem
        src.parent.mkdir(exist_ok=True)
        src.write_bytes(data)
        if name not in self.exp.files:
            self.exp.add(name, data)
        self.exp.optional.add(name)  # until acknowledged: the user still has the file
        self.cli = subprocess.Popen([*trainerd_cmd(), "queue", "add", str(src), "--base-dir", str(self.base)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = self.cli.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.cli.kill()
            out, _ = self.cli.communicate()
        if self.cli.returncode == 0:
            self.exp.optional.discard(name)
            self.exp.acked.add(name)
            self.tally.bump("acked:queue-add")
        else:
            self.tally.bump("queue-add-cut")
            self.retry_add = (name, data)
        self.cli = None

    def acks(self) -> None:
        """Files the daemon said it queued, from its output (off the cut filesystem)."""
        try:
            text = self.out.read_text(errors="replace")
        except OSError:
            return
        for name in ACK.findall(text):
            if name in self.exp.files and name not in self.exp.acked:
                self.exp.acked.add(name)
                self.tally.bump("acked:daemon")

    def finished(self) -> bool:
        return not self.pending and all_done(self.base, self.sc.files)

    def idle(self) -> bool:
        return not any(self.layout.active.iterdir()) and not any(
            any(self.layout.queued(p).iterdir()) for p in ("high", "normal", "low"))

    # -------------------------------------------------------------- one cut
    def start(self) -> None:
        self.d = start_daemon(self.base, out=self.out)
        wait_for(lambda: up(self.base, self.d) or self.d.poll() is not None, timeout=120, what="daemon up")
        if self.d.poll() is not None:
            raise AssertionError(f"daemon exited {self.d.returncode} at start:\n{self._tail()}")

    def cut_once(self, n: int) -> None:
        r = self.rng
        mode, seed = r.choice(MODES), r.randrange(2**31)
        versions = sorted(v.name for v in self.layout.models.iterdir() if re.fullmatch(r"v\d+", v.name))
        idle = self.idle()
        if idle:  # nothing to train: deliver, or work on the line (rollback is refused mid-job)
            moment = r.choice(["intake"] * 2 * bool(self.pending) + ["snapshot"] * bool(versions)
                              + ["rollback"] * (len(versions) >= 2) or ["time"])
        elif self.pending and r.random() < 0.25:
            moment = "intake"
        else:
            moment = r.choice(TRAINING)
        self.line_cuts += moment in ("rollback", "snapshot")
        self.tally.bump(f"target:{moment}")
        self.tally.bump(f"mode:{mode}")
        if moment == "time":
            time.sleep(r.uniform(0, 6))
            self.fs.cut(mode, seed, "time")
        else:
            ops, pattern, most = MOMENTS[moment]
            after = r.randint(0, most)
            arm = lambda: self.fs.arm(ops, pattern, after, mode, seed, moment)  # noqa: E731
            if moment == "intake":
                self.deliver_next(arm)
            else:
                arm()
                self._provoke(moment, versions)
            hit = poll(self.fs.cut_info, 25 if moment in TRAINING else 5, 0.02)
            if hit is None:
                self.tally.bump(f"target:{moment}:timeout")
                self.fs.cut(mode, seed, f"{moment}:timeout")
        self.power_off(n)

    def _provoke(self, moment: str, versions: list[str]) -> None:
        """Make the armed moment happen (the daemon makes the others by itself)."""
        if moment == "rollback":
            newest = os.readlink(self.layout.current_model)
            self.restore = newest
            self._run_cli("models", "rollback", versions[-2] if newest == versions[-1] else versions[-1])
        elif moment == "snapshot":
            self.day += 1
            code = ("import sys; from trainerd.line.snapshots import snapshot; from trainerd.paths import Layout; "
                    "print(snapshot(Layout.at(sys.argv[1]), day=sys.argv[2]))")
            self._run([sys.executable, "-c", code, str(self.base), f"2030-01-{self.day:02d}"])

    def _run_cli(self, *args: str) -> None:
        self._run([*trainerd_cmd(), *args, "--base-dir", str(self.base)])

    def _run(self, cmd: list[str]) -> None:
        self.cli = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.cli.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass  # the cut's kill ends it
        self.cli = None

    def power_off(self, n: int) -> None:
        """The other half of the cut (the filesystem already stopped answering): every
        process using it dies; then remount what survived and look at it."""
        info = poll(self.fs.cut_info, 10, 0.02)
        self.fs.kill_users(also=[p.pid for p in (self.d, self.cli) if p is not None])
        if self.d is not None:
            self.d.wait()
        self.acks()
        info = self.fs.remount()
        self.tally.bump(f"landed:{info['tag']}")
        self.tally.sample("pending_ops_lost_or_torn", info["pending_ops"])
        problems = invariants.check(self.base, self.exp) + check_state_db(self.layout)
        if problems:
            self.tally.fail(f"cut {n} ({info['tag']}, {info['mode']}, hit {info.get('hit')}) in {self.root}",
                            problems + [invariants.dump(self.base)])
            self.log(f"VIOLATION after cut {n}: {problems}")
            self._keep(f"cut{n:03d}")
        self.start()
        self.after_restart()

    def after_restart(self) -> None:
        """Put back what a user would: a rolled-back line forward again, a `queue add`
        that was cut before it answered and whose file is not in the queue."""
        restore, self.restore = self.restore, None
        for _ in range(3):  # the line must end as the uninterrupted run's
            if not restore or os.readlink(self.layout.current_model) == restore:
                break
            self._run_cli("models", "rollback", restore)
        retry = self.retry_add
        if retry is not None:
            self.retry_add = None
            name = retry[0]
            found = [p.where for p in invariants.where_is(self.layout, self.exp).get(name, [])]
            if not found:  # never taken: the user adds it again
                self.pending.insert(0, retry)
                return
            self.exp.optional.discard(name)  # it is in the queue now: it must stay there
            if found[0].startswith(("queued", "active", "done")):
                self.exp.acked.add(name)
                self.tally.bump("acked:found-after-cut")

    # -------------------------------------------------------------- the round
    def run(self, cuts: int, first: int, ref: Reference, timeout: float) -> int:
        self.deliver_next(inbox_only=True)  # taken in, oldest first, when the daemon starts
        self.deliver_next(inbox_only=True)
        self.start()
        done = 0
        try:
            # Two cuts are kept for the line (rollback, snapshot: only while idle), unless an
            # idle moment gave it its turns already; they come once the queue is done.
            reserve = 2 if cuts >= 4 else 0
            while done < cuts - max(0, reserve - self.line_cuts) and not self.finished():
                self.cut_once(first + done)
                done += 1
            while self.deliver_next():
                pass
            self._drain(timeout)
            while done < cuts:
                self.cut_once(first + done)
                done += 1
            self._drain(timeout)
            rc = stop_daemon(self.d, self.base)
            if rc != 0:
                self.tally.fail(f"round {self.root}", [f"daemon exit {rc} on SIGTERM"])
            self.acks()
            self.finish(ref)
        finally:
            self.fs.kill_users(also=[p.pid for p in (self.d, self.cli) if p is not None])
            self.fs.stop()
        return done

    def _drain(self, timeout: float) -> None:
        wait_for(lambda: all_done(self.base, self.sc.files) and self.idle(), timeout=timeout,
                 what=f"all {self.sc.files} jobs done in {self.base}\n{self._tail()}")

    def finish(self, ref: Reference) -> None:
        problems = invariants.check(self.base, self.exp, final=True) + check_against_reference(self.base, ref)
        problems += [f"{n} never acknowledged" for n in sorted(set(self.exp.files) - self.exp.acked)]
        self.tally.bump("rounds")
        self.tally.bump("jobs_done", len(list(self.layout.done.iterdir())))
        if problems:
            self.tally.fail(f"end of round {self.root}", problems + [invariants.dump(self.base)])
            self.log(f"VIOLATION at the end of the round: {problems}")
            self._keep("end")

    def _keep(self, what: str) -> None:
        """A copy of the base dir off the filesystem (which is remounted or unmounted next)."""
        shutil.copytree(self.base, self.root / f"kept-{what}", symlinks=True, dirs_exist_ok=True)

    def _tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.out.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def check_state_db(layout: Layout) -> list[str]:
    """state.db is history: it must open and pass SQLite's own check, or be absent (the
    daemon then makes a new one and rebuilds it from jobs/)."""
    if not layout.state_db.exists():
        return []
    try:
        con = sqlite3.connect(layout.state_db, timeout=10)
        try:
            res = con.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as e:
        return [f"state.db does not open after the cut: {e}"]
    return [] if res == "ok" else [f"state.db fails its integrity check: {res}"]


def campaign(model: Path, root: Path, ref: Reference, *, n: int, per_round: int = 20,
             seed: int | None = None, sc: Scenario | None = None, log: Log = quiet,
             timeout: float = 900) -> Tally:
    """`n` power cuts in rounds of at most `per_round`; the tally's violations must be []."""
    tally, total = in_rounds(Round, model, root, ref, n=n, per_round=per_round, seed=seed, sc=sc, log=log,
                             timeout=timeout, what="cuts")
    tally.counts["cuts"] = total
    line = f"power: {total} cuts, {len(tally.violations)} violations (seed {tally.counts['seed']})"
    log(line)
    print(line, flush=True)
    json.dumps(tally.summary())  # the summary must serialise (bench/chaos.py prints it)
    return tally
