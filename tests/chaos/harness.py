"""Shared machinery of the chaos campaigns: the scenario (files + config), the uninterrupted
reference run, real daemon processes, and freezing the world to look at it.

Used by tests/chaos/test_*.py (short CI runs) and bench/chaos.py (long runs). Nothing here
fakes the product: the daemon is `trainerd run`, the worker is `python -m trainerd.worker`,
the model is the tiny real one, signals are real signals.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.chaos import invariants
from tests.conftest import chat_rows, cli, daemon_log, make_base, start_daemon, wait_for
from trainerd.paths import Layout

# Checkpoints every 2 steps so kills land between, inside and right after saves; attempts
# unlimited because every kill of a worker counts as one and the point is to finish anyway.
CHAOS_TOML = """
[train]
micro_batch_size = 2
[checkpoint]
every_steps = 2
[queue]
max_attempts = 100000
[schedule]
snapshot_at = "off"
[daemon]
stop_grace_seconds = 120
"""

Log = Callable[[str], None]


def quiet(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class Scenario:
    """A queue of files that trains the same way every time (same bytes, same order)."""

    files: int = 5
    rows: int = 24
    toml: str = CHAOS_TOML

    def data(self) -> list[tuple[str, bytes]]:
        return [(f"chaos{i}.jsonl", "".join(json.dumps(r) + "\n" for r in chat_rows(self.rows, f"c{i}")).encode())
                for i in range(self.files)]

    def base(self, root: Path, model: Path) -> Path:
        return make_base(root, model, self.toml)


# Short CI versions: a smaller queue than bench/chaos.py's (5 files of 24 examples), the
# same code. 3 files x 16 examples at micro-batch 2 = 8 steps each, a checkpoint every 2.
CI_SCENARIO = Scenario(files=3, rows=16)


def chaos_seed() -> int | None:
    """TRAINERD_CHAOS_SEED replays a failed CI run (every campaign prints its seed)."""
    raw = os.environ.get("TRAINERD_CHAOS_SEED")
    return int(raw) if raw else None


def deliver(base: Path, name: str, data: bytes, exp: invariants.Expected | None = None,
            bad: bool = False) -> None:
    """The Maildir way: write aside, backdate (no settle wait), rename in."""
    inbox = Layout.at(base).inbox
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    old = time.time() - 3600
    os.utime(tmp, (old, old))
    if exp is not None:
        exp.add(name, data, bad)
    tmp.rename(inbox / name)


@dataclass
class Reference:
    adapter: dict[str, Any]
    names: list[str]  # original names in line order


def reference_run(sc: Scenario, model: Path, root: Path) -> Reference:
    """The same files, trained without interruption: what every campaign must equal."""
    base = sc.base(root / "reference", model)
    for name, data in sc.data():
        deliver(base, name, data)
    cli("run", "--base-dir", base, "--once", timeout=900)
    return Reference(invariants.current_adapter(base), line_names(base))


def line_names(base: Path) -> list[str]:
    layout = Layout.at(base)
    return [j["name"] for _n, man in reversed(invariants.model_line(layout)) for j in man.get("jobs", [])]


def check_against_reference(base: Path, ref: Reference) -> list[str]:
    names = line_names(base)
    if names != ref.names:
        return [f"model line trained {names}, the uninterrupted run {ref.names}"]
    return invariants.same_weights(invariants.current_adapter(base), ref.adapter)


# ------------------------------------------------------------------ processes
def workers(daemon_pid: int) -> list[psutil.Process]:
    """The daemon's training workers (not housework children)."""
    out = []
    try:
        kids = psutil.Process(daemon_pid).children()
    except psutil.NoSuchProcess:
        return []
    for p in kids:
        try:
            if "trainerd.worker" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextlib.contextmanager
def frozen(daemon_pid: int):
    """SIGSTOP the daemon and its children so the checker reads a still world; a frozen
    state is one a kill could have left too, so every invariant must hold in it."""
    procs = []
    with contextlib.suppress(psutil.NoSuchProcess):
        d = psutil.Process(daemon_pid)
        procs = [d, *d.children()]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.suspend()
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.resume()


def up(base: Path, d: subprocess.Popen) -> bool:
    """This daemon has written its status: its signal handlers are installed. (A SIGTERM
    in the ~0.3 s before, while Python imports the CLI, has its default action.)"""
    try:
        return json.loads(Layout.at(base).status.read_text()).get("pid") == d.pid
    except (OSError, ValueError):
        return False


def stop_daemon(d: subprocess.Popen, base: Path | None = None, timeout: float = 120) -> int:
    """SIGTERM (a warm stop), once the daemon is up; its exit status."""
    if base is not None:
        wait_for(lambda: up(base, d) or d.poll() is not None, timeout=60, what="daemon up")
    if d.poll() is None:
        d.send_signal(signal.SIGTERM)
    return d.wait(timeout)


def kill_tree(d: subprocess.Popen) -> None:
    """Test teardown: the daemon and anything it left."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in psutil.Process(d.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    if d.poll() is None:
        d.kill()
        d.wait()


def all_done(base: Path, n: int) -> bool:
    return len(os.listdir(Layout.at(base).done)) >= n


def _fresh(paths, since: float) -> bool:
    """Some file under one of `paths` was written at or after `since` - 1 s: work that was
    in progress at a kill at `since` (leftovers of earlier kills are older)."""
    for root in paths:
        for p in [root, *root.rglob("*")]:
            try:
                if p.stat().st_mtime >= since - 1.0:
                    return True
            except OSError:
                pass
    return False


def phase(base: Path, at: float) -> list[str]:
    """Where a kill at time `at` landed, read from the disk (after the kill, or with the
    world frozen): intake, a checkpoint write, a publish in progress; a job published but
    not yet moved to done/; else training or between jobs."""
    layout = Layout.at(base)
    tags = []
    if _fresh([d for d in layout.incoming.iterdir() if d.is_dir() and any(d.iterdir())], at):
        tags.append("intake")
    if _fresh(layout.active.glob("*/checkpoints/.staging/checkpoint-*"), at):
        tags.append("checkpoint-write")
    if _fresh([p for p in layout.models.iterdir() if p.name.startswith(".tmp-")], at):
        tags.append("publish")
    try:
        newest = invariants.model_line(layout)[:1]
    except Exception:
        newest = []
    in_line = {j["id"] for _n, m in newest for j in m.get("jobs", [])}
    if any(p.name in in_line for p in layout.active.iterdir()):
        tags.append("published-not-done")
    if not tags:
        tags.append("job-active" if any(layout.active.iterdir()) else "between-jobs")
    return tags


@dataclass
class Tally:
    """Counts a campaign reports; `violations` must stay empty."""

    counts: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def bump(self, key: str, by: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + by

    def sample(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def fail(self, where: str, problems: list[str]) -> None:
        self.violations += [f"{where}: {p}" for p in problems]

    def summary(self) -> dict[str, Any]:
        stats = {k: {"n": len(v), "min": round(min(v), 3), "median": round(sorted(v)[len(v) // 2], 3),
                     "max": round(max(v), 3)} for k, v in self.samples.items() if v}
        return {"counts": dict(sorted(self.counts.items())), "samples": stats,
                "violations": len(self.violations), "first_violations": self.violations[:20]}


def rng_for(seed: int | None, log: Log) -> tuple[random.Random, int]:
    seed = int(time.time() * 1000) % 2**31 if seed is None else seed
    log(f"seed {seed} (replay with --seed {seed} / TRAINERD_CHAOS_SEED={seed})")
    return random.Random(seed), seed


def log_tail(base: Path, n: int = 40) -> str:
    return "\n".join(daemon_log(base).splitlines()[-n:])


__all__ = ["Scenario", "Reference", "Tally", "deliver", "reference_run", "check_against_reference",
           "workers", "dead", "frozen", "stop_daemon", "kill_tree", "all_done", "phase", "rng_for",
           "start_daemon", "wait_for", "quiet", "log_tail"]


def in_rounds(round_cls: Any, model: Path, root: Path, ref: Reference, *, n: int, per_round: int,
              seed: int | None, sc: Scenario | None, log: Log, timeout: float, what: str) -> tuple[Tally, int]:
    """A campaign's loop (kills, power cuts): `n` events in rounds of at most `per_round`,
    each round a fresh base dir under `root`; (tally, events done)."""
    sc = sc or Scenario()
    rng, seed = rng_for(seed, log)
    tally = Tally()
    tally.counts["seed"] = seed
    total, rnd = 0, 0
    t0 = time.monotonic()
    while total < n:
        rnd += 1
        r = round_cls(sc, model, root / f"round{rnd:03d}", rng, tally, log)
        total += r.run(min(per_round, n - total), total + 1, ref, timeout)
        log(f"round {rnd}: {total}/{n} {what}, {len(tally.violations)} violations, {time.monotonic() - t0:.0f}s")
    return tally, total
