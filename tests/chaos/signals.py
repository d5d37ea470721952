"""SIGTERM at random points, once (warm stop) or twice (cold stop), then a restart.

Warm: exit 0; if a worker was training, its attempt ends "stopped" with a checkpoint at
the step it stopped on (0 steps lost), committed within one step + one save of the
signal (+ RELAY_ALLOWANCE_S; a stop later than that is counted as `warm_over_bound`,
which must stay 0). The exit itself, process teardown included, is measured and reported
as `warm_excess_s`, not judged: two interpreters' exits on a loaded machine are not the
stop's doing.
Cold: exit 0 promptly (measured); the job stays active and resumes on restart.
After every point the invariants hold; at the end the queue is finished with
`trainerd run --once` and the model must equal the uninterrupted run's.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.chaos import invariants
from tests.chaos.harness import (
    Log,
    Reference,
    Scenario,
    Tally,
    check_against_reference,
    deliver,
    kill_tree,
    quiet,
    rng_for,
    start_daemon,
    workers,
)
from tests.conftest import cli
from trainerd import atomic
from trainerd.paths import PRIORITIES, Layout

# Between the SIGTERM and the worker's flag: the daemon's handler wakes its loop, which
# signals the worker (a thread wake-up and a kill(2), milliseconds; seconds of margin for
# a loaded machine). A checkpoint later than the slowest step + the save + this waited for
# something else, and the stop was late.
RELAY_ALLOWANCE_S = 3.0


def _attempt(job: Path) -> dict:
    try:
        return atomic.read_json(job / "job.json")["attempts"][-1]
    except (OSError, ValueError, KeyError, IndexError):
        return {}


def _step_and_save_s(job: Path, attempt: int) -> tuple[float, float]:
    """The slowest step of this attempt and its last checkpoint's save time (from the
    worker's own metrics.jsonl and progress.json)."""
    rows = [r for r in invariants.read_json_lines(job / "metrics.jsonl") if r.get("attempt") == attempt]
    ts = [r["ts"] for r in rows]
    step = max((b - a for a, b in zip(ts, ts[1:], strict=False)), default=0.0)
    try:
        save = float(atomic.read_json(job / "progress.json").get("last_checkpoint_seconds") or 0.0)
    except (OSError, ValueError):
        save = 0.0
    return step, save


def _training_pid(layout: Layout) -> int | None:
    for job in layout.active.iterdir():
        try:
            return int(atomic.read_json(job / "progress.json")["pid"])
        except (OSError, ValueError, KeyError):
            return None
    return None


def _wait_training(layout: Layout, daemon_pid: int, timeout: float) -> bool:
    """Until this daemon's worker has logged a step (progress.json names its pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws = {w.pid for w in workers(daemon_pid)}
        if ws and _training_pid(layout) in ws:
            return True
        if not any(any(d.iterdir()) for d in (layout.inbox, layout.active, *map(layout.queued, PRIORITIES))):
            return False  # nothing left to train (a file still in the inbox is yet to be taken in)
        time.sleep(0.01)
    return False


def one_point(base: Path, rng, tally: Tally, exp: invariants.Expected, n: int, log: Log) -> None:
    layout = Layout.at(base)
    d = start_daemon(base)
    cold = rng.random() < 0.4
    try:
        if rng.random() < 0.6:  # mid-step: the window a warm stop is about
            _wait_training(layout, d.pid, 60)
            time.sleep(rng.uniform(0, 0.5))
        else:
            time.sleep(rng.uniform(0.05, 9.0))  # anywhere from daemon start-up to mid-job
        ws = workers(d.pid)
        jobs = list(layout.active.iterdir())
        training = bool(ws) and _training_pid(layout) == ws[0].pid
        try:
            up = atomic.read_json(layout.status).get("pid") == d.pid
        except (OSError, ValueError):
            up = False
        t0, sent_at = time.monotonic(), time.time()  # the worker's files say time.time()
        d.send_signal(signal.SIGTERM)
        if cold:
            time.sleep(rng.uniform(0.05, 0.5))
            if d.poll() is None:
                d.send_signal(signal.SIGTERM)
        rc = d.wait(300)
        latency = time.monotonic() - t0
    finally:
        kill_tree(d)
    kind = "cold" if cold else "warm"
    phase_ = "training" if training else "worker-starting" if ws else "no-worker" if up else "daemon-starting"
    tally.bump(f"{kind}:{phase_}")
    tally.sample(f"{kind}_exit_s:{phase_}", latency)
    # Before trainerd's handlers exist (the interpreter and the CLI's imports, ~0.3 s) SIGTERM
    # has its default action: death by SIGTERM, which systemd counts as a clean stop; the
    # daemon has changed nothing yet. From the handlers on, the contract is exit 0.
    allowed = (0, -signal.SIGTERM) if phase_ == "daemon-starting" else (0,)
    tally.bump(f"exit:{rc}")
    problems = [f"exit {rc}"] if rc not in allowed else []
    if not cold and training and jobs[0].exists():
        problems += _warm_checks(jobs[0], sent_at, latency, tally)
    problems += invariants.check(base, exp)
    if problems:
        tally.fail(f"point {n} ({kind}, {phase_})", problems)
        log(f"VIOLATION at point {n}: {problems}")


def _warm_checks(job: Path, sent_at: float, latency: float, tally: Tally) -> list[str]:
    a = _attempt(job)
    if a.get("outcome") == "finished":
        return []  # it finished before the signal arrived
    meta = atomic.read_json(job / "job.json")
    out = []
    if a.get("outcome") != "stopped":
        out.append(f"warm stop ended the attempt {a.get('outcome')!r} ({a.get('error')})")
    step = meta.get("steps_done", 0)
    if step and not (job / "checkpoints" / f"step-{step:06d}").is_dir():
        out.append(f"stopped at step {step} without a checkpoint there (steps lost)")
    step_s, save_s = _step_and_save_s(job, a.get("number", 0))
    tally.sample("warm_excess_s", latency - step_s - save_s)
    try:
        committed_at = float(atomic.read_json(job / "progress.json")["last_checkpoint_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return [*out, "a warm stop left no checkpoint time in progress.json"]
    tally.bump("warm_stops_judged")
    tally.sample("warm_checkpoint_excess_s", committed_at - sent_at - step_s - save_s)
    if committed_at - sent_at > step_s + save_s + RELAY_ALLOWANCE_S:
        tally.bump("warm_over_bound")
    return out


def campaign(model: Path, root: Path, ref: Reference, *, points: int, seed: int | None = None,
             sc: Scenario | None = None, log: Log = quiet) -> Tally:
    sc = sc or Scenario()
    rng, seed = rng_for(seed, log)
    tally = Tally()
    tally.counts["seed"] = seed
    base = sc.base(root / "base", model)
    exp = invariants.Expected()
    for name, data in sc.data():
        deliver(base, name, data, exp)
    for n in range(1, points + 1):
        one_point(base, rng, tally, exp, n, log)
        if len(list(Layout.at(base).done.iterdir())) == sc.files:
            log(f"all jobs done after {n} points")
            break
    tally.counts["points"] = n
    tally.counts["done_before_restart"] = len(list(Layout.at(base).done.iterdir()))
    cli("run", "--base-dir", base, "--once", timeout=900)  # the restart finishes the queue
    tally.fail("end", invariants.check(base, exp, final=True) + check_against_reference(base, ref))
    log(f"signals: {tally.summary()}")
    return tally
