"""`trainerd status --watch`: a live terminal view of the daemon, read from disk only.

Every `interval` seconds it reads what `trainerd status` reads (the lock says whether the
daemon runs; run/status.json its state and heartbeat), the active job's progress.json and
metrics.jsonl, and the newest probe eval (state.db, or the active job's evals.jsonl), and
redraws: daemon state, a progress bar with ETA, a loss sparkline, queue counts, the model.
The ETA and the incremental metrics reader are the dashboard's, so both agree.

No torch import anywhere on this path: the CLI answers at once.
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from trainerd import status
from trainerd.control import Desired
from trainerd.humanize import ago
from trainerd.jobs import EVALS, METRICS
from trainerd.ledger import read_evals
from trainerd.paths import Layout
from trainerd.state import DaemonState
from trainerd.state import parse as parse_state
from trainerd.web.series import EVAL_SERIES, JsonlTail, eta_seconds

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 40
BAR_WIDTH = 30
# Every DaemonState has a colour (tests/test_watch.py checks): a state added later is not
# drawn white by accident. An unknown string (another daemon version) is drawn white.
STATE_STYLE: dict[DaemonState, str] = {
    DaemonState.STARTING: "cyan", DaemonState.IDLE: "cyan", DaemonState.TRAINING: "green",
    DaemonState.CONSOLIDATING: "green", DaemonState.PAUSED: "yellow", DaemonState.PAUSED_DISK: "red",
    DaemonState.PAUSED_MODEL: "red", DaemonState.ERROR: "red", DaemonState.STOPPED: "yellow",
}


def sparkline(values: list[float], width: int = SPARK_WIDTH) -> str:
    """The whole series in `width` characters (bucket means), scaled to its own min..max."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if len(vals) > width:
        edges = [round(i * len(vals) / width) for i in range(width + 1)]
        vals = [sum(vals[a:b]) / (b - a) for a, b in zip(edges, edges[1:], strict=False)]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    top = len(SPARK) - 1
    return "".join(SPARK[round((v - lo) / (hi - lo) * top) if hi > lo else top // 2] for v in vals)


def _dur(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    s = max(0, int(round(s)))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def _num(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _line(markup: str, style: str = "") -> Text:
    """One line that never wraps: a live view keeps its shape in an 80-column terminal."""
    t = Text.from_markup(markup, style=style, overflow="ellipsis")
    t.no_wrap = True
    return t


def _slug(job_id: str) -> str:
    return job_id.split("-", 2)[-1]  # ids are TIME-MICROS-slug; the slug is the file name


class Watcher:
    """Builds one frame at a time; keeps the parsed metrics between frames."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.metrics = JsonlTail(max_files=2)
        self.evals = JsonlTail(max_files=2, cols=EVAL_SERIES)

    def frame(self) -> RenderableType:
        s = status.collect(self.layout, recent=3)
        active = s["active"][0] if s["active"] else None
        parts: list[RenderableType] = [self._daemon(s)]
        parts += self._job(active, s["daemon"]) if active else [_line("job     nothing is training", "dim")]
        parts.append(self._probe(active["id"] if active else None))
        q = s["queue"]
        failed = f"[red]{q['failed']} failed[/]" if q["failed"] else "0 failed"
        parts.append(_line(f"queue   {q['queued']} queued (high {q['queued_high']}, normal {q['queued_normal']}, "
                           f"low {q['queued_low']}) · {q['active']} active · {q['done']} done · {failed}"))
        m = s["model"]
        parts.append(_line(f"model   {m['version']}" + (f" ({m.get('kind')})" if m.get("kind") else "")))
        if s["failed"]:
            f = s["failed"][-1]
            parts.append(_line(f"[red]failed[/]  {escape(str(f.get('name')))}: {escape(str(f.get('reason')))}"))
        return Panel(Group(*parts), title=f"trainerd · {escape(str(self.layout.base))}", title_align="left",
                     subtitle=time.strftime("%H:%M:%S"), subtitle_align="right")

    def _daemon(self, s: dict[str, Any]) -> Text:
        d, wish = s["daemon"], s["desired"]
        if not d["running"]:
            line = "daemon  [yellow]not running[/]"
        else:
            raw = d.get("state") or DaemonState.STARTING.value
            known = parse_state(raw)
            style = STATE_STYLE[known] if known is not None else "white"
            line = f"daemon  [{style}]● {escape(str(raw))}[/] (pid {d.get('pid')}"
            if "heartbeat_age" in d:
                line += f", heartbeat {d['heartbeat_age']:.1f}s ago"
            line += ")" + ("" if d.get("responding", True) else " [bold red]NOT RESPONDING[/]")
        if wish["state"] != Desired.RUNNING.value:
            line += f" · wish [yellow]{wish['state']}[/]" + (f" ({escape(wish['reason'])})" if wish["reason"] else "")
        return _line(line)

    def _job(self, a: dict[str, Any], daemon: dict[str, Any]) -> list[RenderableType]:
        p = a.get("progress") or {}
        rows = self.metrics.rows(self.layout.active / a["id"] / METRICS)
        step, total = p.get("step") or 0, p.get("max_steps") or 0
        if not daemon.get("running"):
            eta = "daemon not running"
        elif parse_state(daemon.get("state")) != DaemonState.TRAINING:
            eta = daemon.get("state") or DaemonState.STARTING.value
        else:
            eta = f"ETA {_dur(eta_seconds(p, rows))}" if step else "loading the model"
        bar = Table.grid(padding=(0, 1))
        bar.add_column(width=7)
        bar.add_column(width=BAR_WIDTH)
        bar.add_column(no_wrap=True, overflow="ellipsis")
        bar.add_row("", ProgressBar(total=total or 1, completed=step, width=BAR_WIDTH),
                    f"{100 * step / total:.0f}%  step {step}/{total} · {eta}" if total else eta)
        by_step = {r["step"]: r.get("loss") for r in rows}  # a resumed attempt's repeats: the latest wins
        losses = [by_step[k] for k in sorted(by_step)]
        ckpt_at = p.get("last_checkpoint_at")
        return [
            _line(f"job     [bold]{escape(str(a.get('name')))}[/] · attempt {p.get('attempt') or a.get('attempts') or 1}"
                  f" [dim]{a['id']}[/]"),
            bar,
            _line(f"        {p.get('examples_done', 0)}/{a['examples']} examples · lr {_num(p.get('lr'), '.2e')} · "
                  f"{_num(p.get('tokens_per_s'), ',.0f')} tok/s"
                  + (f" · checkpoint {ago(ckpt_at)}" if ckpt_at else ""), "dim"),
            _line(f"loss    [bold]{_num(p.get('loss'), '.4f')}[/] [blue]{sparkline(losses)}[/]"
                  + (f" [dim]{min(losses):.3f}..{max(losses):.3f}[/]" if losses else "")),
        ]

    def _probe(self, active_id: str | None) -> Text:
        """The newest probe eval: the running attempt's, else the last one in state.db."""
        latest = None
        if active_id:
            rows = self.evals.rows(self.layout.active / active_id / EVALS)
            latest = {**rows[-1], "job_id": active_id} if rows else None
        if latest is None:
            db = read_evals(self.layout.state_db, limit=1)
            latest = db[-1] if db else None
        if latest is None:
            return _line("probe   no evals yet (put a probe.jsonl in the base dir)", "dim")
        exact = latest.get("exact_match")
        return _line(
            f"probe   loss [bold]{_num(latest.get('loss'), '.4f')}[/] · exact "
            f"{'-' if exact is None else f'{100 * exact:.0f}%'} · similarity {_num(latest.get('similarity'), '.2f')} "
            f"[dim]· {escape(_slug(str(latest.get('job_id'))))} step {latest.get('step')}"
            f"{' (end)' if latest.get('final') else ''}, {ago(latest.get('ts'))}[/]")


def watch(layout: Layout, interval: float = 2.0, once: bool = False, console: Console | None = None) -> None:
    """Redraw the view every `interval` seconds until Ctrl+C; `once` prints one frame."""
    console = console or Console()
    w = Watcher(layout)
    if once:
        console.print(w.frame())
        return
    # Redrawn when the data is re-read, not on a timer of its own: nothing changes between.
    with Live(w.frame(), console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(w.frame(), refresh=True)
        except KeyboardInterrupt:
            pass
