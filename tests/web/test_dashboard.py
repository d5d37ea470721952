"""The dashboard in a real browser, against a real daemon training a real (tiny) model.

Headless Chromium (Debian's, driven by the `playwright` package; `playwright install` is
never run) loads the page, watches the loss curve grow, sees the first job's probe eval on
the probe chart, enters the token, clicks Pause and sees the daemon converge to paused. Screenshots land in tests/artifacts/ for a person to
judge the design.

The supervisor does not start the HTTP server yet, so this test runs it in the test
process, fed by the daemon's own heartbeat in run/status.json; the daemon's config says
`[server] enabled = false` so that, once the supervisor does start one, the two never
compete for run/server.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import (
    chat_rows,
    cli,
    daemon_log,
    make_base,
    start_daemon,
    wait_for,
    write_jsonl,
)
from trainerd import control
from trainerd.config import ServerConfig
from trainerd.paths import Layout
from trainerd.web.server import start_server
from trainerd.web.tokens import read_token

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# 4000 examples / micro-batch 2 = 2000 steps: the job cannot finish before the test pauses
# it mid-epoch, even on a fast machine (with 200 examples it once finished first, in CI).
CONFIG = "[train]\nmicro_batch_size = 2\n[server]\nenabled = false\n[eval]\nmax_new_tokens = 16\n"


@pytest.fixture
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright; it drives "
        "the system Chromium, `playwright install` is not needed)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no {CHROMIUM}: apt-get install -y chromium")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as e:  # e.g. a chromium that cannot start in this container
            pytest.skip(f"{CHROMIUM} does not start headless here: {e}")
        yield b
        b.close()


def points(page) -> int:
    return int(page.get_attribute("#loss-chart", "data-points") or 0)


def wait_page(page, js: str, timeout: float, what: str) -> None:
    """Poll a JS expression from here: the page's CSP forbids eval, so Playwright's own
    wait_for_function (which evals its predicate inside the page) cannot run there."""
    wait_for(lambda: page.evaluate(js), timeout=timeout, interval=0.25, what=what)


def active_step(layout: Layout, name: str) -> int:
    for d in layout.active.iterdir():
        try:
            if json.loads((d / "job.json").read_text())["original_name"] == name:
                return int(json.loads((d / "progress.json").read_text()).get("step", 0))
        except (OSError, ValueError, KeyError):
            pass
    return 0


def test_dashboard_follows_training_and_pauses_the_daemon(tmp_path, tiny_model, browser):
    base = make_base(tmp_path / "b", tiny_model, CONFIG)
    layout = Layout.at(base)
    # A short job that finishes (history, a model version), the main one to watch, a
    # broken file (failed, with its line), and one that waits in the queue.
    write_jsonl(base / "inbox" / "a-intro.jsonl", chat_rows(12, "intro"))
    write_jsonl(base / "inbox" / "b-main.jsonl", chat_rows(4000, "main"))
    (base / "inbox" / "c-broken.jsonl").write_text('{"text": "fine"}\n{"messages": [}\n')
    settled = time.time() - 3600  # as write_jsonl does: no settle wait
    os.utime(base / "inbox" / "c-broken.jsonl", (settled, settled))
    write_jsonl(base / "inbox" / "d-later.jsonl", chat_rows(20, "later"))
    write_jsonl(base / "probe.jsonl", chat_rows(4, "intro"))  # every job is scored on it at its end

    def heartbeat() -> float:
        return float(json.loads(layout.status.read_text())["heartbeat_at"])

    daemon = start_daemon(base)
    server = start_server(layout, ServerConfig(port=0), heartbeat)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
        page.goto(server.url)
        assert page.title() == "trainerd"

        wait_for(lambda: os.listdir(layout.done), timeout=240, what="the intro job to finish")
        wait_for(lambda: active_step(layout, "b-main.jsonl") >= 1, timeout=240, what="the main job to train")
        # The intro job's end-of-job probe eval, from state.db, on the probe chart.
        wait_page(page, "Number(document.getElementById('evals-loss-chart').dataset.points) >= 1", 60,
                  "the probe eval chart")
        assert "1 eval of 1 job" in page.inner_text("#evals-title")
        assert page.locator("#evals-latest tbody tr").count() == 4
        assert "a-intro.jsonl" in page.inner_text("#evals-latest-title")
        # The chart follows the active job and grows with it.
        wait_page(page, "document.getElementById('chart-title').textContent.includes('b-main')"
                  " && Number(document.getElementById('loss-chart').dataset.points) >= 3", 60,
                  "the chart to show the main job")
        before = points(page)
        wait_page(page, f"Number(document.getElementById('loss-chart').dataset.points) > {before}", 60,
                  "more points on the loss chart")
        assert points(page) > before
        wait_page(page, "document.getElementById('job-eta').textContent.startsWith('ETA ')", 30, "an ETA")
        assert page.inner_text("#daemon-state") == "training"
        assert "step" in page.inner_text("#job-progress")
        assert "b-main.jsonl" in page.inner_text("#job-name")
        page.screenshot(path=str(ARTIFACTS / "dashboard-training.png"), full_page=True)

        # Control needs the token: first without it, the page asks for it.
        page.evaluate("localStorage.removeItem('trainerd.token')")
        page.click("#btn-pause")
        assert page.is_visible("#token-input")
        assert control.read_wish(layout).state == control.Desired.RUNNING  # nothing sent without it
        page.fill("#token-input", read_token(layout) or "")
        page.click("#token-save")
        assert page.is_hidden("#token-bar")
        page.click("#btn-pause")
        wait_page(page, "document.getElementById('daemon-state').textContent === 'paused'", 120,
                  "the page to show the daemon paused")
        # The daemon converged: the worker checkpointed and stopped, the job waits in active/.
        st = json.loads(layout.status.read_text())
        assert st["state"] == "paused" and st["desired"] == "paused"
        [job] = list(layout.active.iterdir())
        meta = json.loads((job / "job.json").read_text())
        assert meta["attempts"][-1]["outcome"] == "stopped"
        assert page.is_disabled("#btn-pause") and page.is_enabled("#btn-resume")
        # The rest of the page: the queue, the failure with its line, history, models.
        assert "d-later.jsonl" in page.inner_text("#queue-table")
        assert "line 2" in page.inner_text("#failed-list")
        wait_page(page, "document.querySelector('#history-table').innerText.includes('a-intro')", 30,
                  "the intro job in the history")
        assert "v0001" in page.inner_text("#models-table")
        assert "paused" in page.inner_text("#job-eta")
        page.wait_for_timeout(2500)  # one more poll, so the picture is settled
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert not problems, problems
    finally:
        server.stop()
        cli("stop", "--base-dir", base, check=False)
        try:
            assert daemon.wait(60) == 0, daemon_log(base)
        finally:
            if daemon.poll() is None:
                daemon.kill()
