"""`trainerd status --watch`: one frame rendered to a recording console, the live view in a
real terminal (tmux), and no torch import on the way."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import chat_rows, make_base, trainerd_cmd, wait_for, write_jsonl
from trainerd import atomic
from trainerd.config import QueueConfig
from trainerd.jobs import Priority
from trainerd.ledger import Ledger
from trainerd.lock import DaemonLock
from trainerd.paths import Layout
from trainerd.queue import Queue
from trainerd.state import DaemonState
from trainerd.watch import SPARK, STATE_STYLE, sparkline, watch


def submit(layout: Layout, tmp: Path, name: str, n: int, priority: Priority = Priority.NORMAL):
    return Queue(layout, QueueConfig()).submit(write_jsonl(tmp / "src" / name, chat_rows(n)), priority)


def progress(job: Path, step: int, total: int = 40) -> None:
    """What the worker writes: a metrics row per step (1 s apart) and progress.json."""
    rows = [{"attempt": 1, "step": s, "ts": 1000.0 + s, "loss": 3.0 - s / 20, "lr": 2e-3, "tokens_per_s": 900.0,
             "examples_done": 4 * s} for s in range(1, step + 1)]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    atomic.write_json(job / "progress.json", {**rows[-1], "max_steps": total, "examples_total": 160})


@pytest.fixture
def training(tmp_path):
    """A base dir as a live daemon keeps it mid-job: lock held, heartbeat fresh, one job
    active with ten steps logged, one queued, one probe eval in state.db."""
    layout = Layout.at(make_base(tmp_path / "base", "unused-model"))
    lock = DaemonLock(layout.lock)
    lock.acquire()
    active = submit(layout, tmp_path, "main-data.jsonl", 160)
    Queue(layout, QueueConfig()).claim()
    submit(layout, tmp_path, "later.jsonl", 8, Priority.HIGH)
    atomic.write_json(layout.status, {"heartbeat_at": time.time(), "heartbeat_seconds": 0.5,
                                      "state": "training", "desired": "running"})
    progress(layout.active / active.id, 10)
    ledger = Ledger(layout.state_db)
    ledger.evals("20260101T000000-000001-old", 1, [{"step": 8, "ts": time.time() - 60, "final": True,
                                                    "loss": 2.25, "exact_match": 0.5, "similarity": 0.75}])
    ledger.close()
    yield layout, layout.active / active.id
    lock.release()


def frame(layout: Layout) -> str:
    console = Console(record=True, width=80, file=io.StringIO())  # a plain terminal
    watch(layout, 1, once=True, console=console)
    return console.export_text()


def test_one_frame_shows_daemon_progress_eta_loss_queue_and_probe(training):
    layout, job = training
    text = frame(layout)
    assert "● training" in text and "heartbeat" in text
    assert "main-data.jsonl · attempt 1" in text and "40/160 examples" in text
    assert "25%  step 10/40 · ETA 30s" in text  # 30 steps left at the last steps' 1 step/s
    assert "loss    2.5000" in text and sparkline([3.0 - s / 20 for s in range(1, 11)]) in text
    assert "1 queued (high 1, normal 0, low 0) · 1 active · 0 done · 0 failed" in text
    assert "probe   loss 2.2500 · exact 50% · similarity 0.75" in text  # from state.db
    # The running attempt's own evals.jsonl is newer than anything in state.db.
    (job / "evals.jsonl").write_text(json.dumps({"attempt": 1, "step": 10, "ts": time.time(), "final": False,
                                                 "loss": 2.0, "exact_match": 0.25, "similarity": 0.5}) + "\n")
    assert "probe   loss 2.0000 · exact 25%" in frame(layout)
    atomic.write_json(layout.status, {"heartbeat_at": time.time(), "state": "paused", "desired": "paused"})
    assert "● paused" in frame(layout) and "step 10/40 · paused" in frame(layout)


def test_every_daemon_state_is_drawn_in_its_own_colour_and_an_unknown_one_as_written(training):
    """The states come from trainerd.state: "error" and "consolidating" were once missing
    from two UI lists and drawn as if unknown."""
    from trainerd.state import DaemonState
    from trainerd.watch import STATE_STYLE

    assert set(STATE_STYLE) == set(DaemonState)
    layout, _ = training
    for state in DaemonState:
        atomic.write_json(layout.status, {"heartbeat_at": time.time(), "state": state.value, "desired": "running"})
        assert f"● {state.value}" in frame(layout)
    atomic.write_json(layout.status, {"heartbeat_at": time.time(), "state": "warming_up", "desired": "running"})
    text = frame(layout)
    assert "● warming_up" in text and "step 10/40 · warming_up" in text


def test_a_frame_without_daemon_or_jobs(tmp_path):
    layout = Layout.at(make_base(tmp_path / "base", "unused-model"))
    text = frame(layout)
    assert "daemon  not running" in text and "nothing is training" in text and "no evals yet" in text
    assert "model   base" in text


def test_sparkline_keeps_the_shape_in_its_width():
    assert sparkline([]) == "" and sparkline([1.0]) == SPARK[3]
    assert sparkline([3.0, 2.0, 1.0]) == SPARK[-1] + SPARK[4] + SPARK[0]
    long = sparkline([float(-i) for i in range(1000)], width=20)
    assert len(long) == 20 and long[0] == SPARK[-1] and long[-1] == SPARK[0]
    assert sparkline([1.0, float("nan"), None, 2.0]) == SPARK[0] + SPARK[-1]


def test_watch_imports_no_torch(training):
    layout, _ = training
    code = (
        "import io, sys\n"
        "from rich.console import Console\n"
        "from trainerd.cli import app\n"
        "from trainerd.paths import Layout\n"
        "from trainerd.watch import watch\n"
        "c = Console(record=True, file=io.StringIO(), width=120)\n"
        f"watch(Layout.at({str(layout.base)!r}), 1, once=True, console=c)\n"
        "assert 'step 10/40' in c.export_text(), c.export_text()\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (apt-get install tmux)")
def test_status_watch_redraws_in_a_terminal_until_ctrl_c(training):
    layout, job = training
    # A tmux server of our own (-L): started by this process, so it has our environment.
    tmux = ["tmux", "-L", f"trainerd-test-{time.monotonic_ns()}"]
    cmd = " ".join([*trainerd_cmd(), "status", "--watch", "--interval", "0.3", "--base-dir", str(layout.base)])

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout

    subprocess.run([*tmux, "new-session", "-d", f"{cmd}; echo exit=$?; sleep 60"], check=True)  # 80x24
    try:
        wait_for(lambda: "step 10/40" in screen(), timeout=30, what="the first frame")
        first = screen()
        assert "● training" in first and "25%  step 10/40 · ETA 30s" in first, first
        progress(job, 20)  # the worker moves on: the view follows without a keypress
        wait_for(lambda: "step 20/40" in screen(), timeout=10, what="a redraw")
        now = screen()
        assert "50%  step 20/40 · ETA 20s" in now, now
        assert now.count("step 20/40") == 1 and "step 10/40" not in now, now  # redrawn in place
        subprocess.run([*tmux, "send-keys", "C-c"], check=True)
        wait_for(lambda: "exit=0" in screen(), timeout=10, what="a clean exit on Ctrl+C")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_every_daemon_state_has_a_style():
    assert set(STATE_STYLE) == set(DaemonState)
    # status.json carries plain strings: they find the same style as the enum member.
    assert all(STATE_STYLE.get(st.value) == STATE_STYLE[st] for st in DaemonState)
