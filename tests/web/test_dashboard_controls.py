"""The dashboard's controls in a real browser against a real (paused) daemon: upload a
file, change a queued job's priority, remove one, requeue a failed one, roll back a version.

Each control is a wish the daemon carries out (trainerd.wishes); the test waits for the
folders and the `current` link to change on disk, the daemon's doing. Nothing trains (the
daemon stays paused, the model is never loaded), so no tiny model is needed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import chat_rows, daemon, daemon_log, make_base, wait_for, write_jsonl
from tests.web.test_dashboard import (
    browser,  # noqa: F401  (the fixture: system Chromium via playwright)
    wait_page,
)
from trainerd import atomic, control, history
from trainerd.config import QueueConfig
from trainerd.jobs import Outcome, Priority
from trainerd.ledger import Ledger
from trainerd.paths import Layout
from trainerd.queue import Queue
from trainerd.web.tokens import read_token

pytestmark = pytest.mark.slow


def version(layout: Layout, name: str, parent: str, base: str) -> None:
    d = layout.models / name
    d.mkdir(parents=True)
    f = d / "adapter_model.safetensors"
    f.write_bytes(name.encode() * 16)
    # What preflight looks for in a current adapter version: its config and the tokenizer.
    (d / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    for t in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (Path(base) / t).exists():
            shutil.copy(Path(base) / t, d / t)
    files = [p for p in d.iterdir() if p.is_file()]
    atomic.write_json(d / atomic.MANIFEST, {
        "version": name, "kind": "adapter", "parent": parent, "base": base, "created_at": 1.0e9, "jobs": [],
        "files": {p.name: {"size": p.stat().st_size, "sha256": atomic.sha256_file(p)} for p in files}})


def where(layout: Layout, job_id: str) -> str | None:
    try:
        return str(Queue(layout, QueueConfig()).find(job_id).path.relative_to(layout.jobs))
    except Exception:
        return None


def test_every_control_goes_through_the_daemon(tmp_path, browser, tiny_model):  # noqa: F811
    base = make_base(tmp_path / "base", tiny_model, "[server]\nport = 0\n")  # preflight needs a model
    layout = Layout.at(base)
    ledger = Ledger(layout.state_db)
    q = Queue(layout, QueueConfig(), on_event=ledger.event)
    # One finished job with the version it produced (the supervisor's `trained` event).
    q.submit(write_jsonl(tmp_path / "old.jsonl", chat_rows(2)), Priority.NORMAL)
    done = q.claim()
    assert done is not None
    q.record_attempt_start(done, None, Priority.NORMAL)
    meta = q.record_attempt_end(done, Outcome.FINISHED, 0, None)
    ledger.event(history.TRAINED_EVENT, done.id, **history.trained_event(meta, "v0002"))
    q.finish(done)
    keep = q.submit(write_jsonl(tmp_path / "keep.jsonl", chat_rows(3)), Priority.NORMAL)
    drop = q.submit(write_jsonl(tmp_path / "drop.jsonl", chat_rows(3)), Priority.LOW)
    bad = q.submit(write_jsonl(tmp_path / "bad.jsonl", [{"nope": 1}]), Priority.NORMAL)  # rejected at intake
    crashed = q.submit(write_jsonl(tmp_path / "crashed.jsonl", chat_rows(3)), Priority.HIGH)
    crashed = q.fail(q.claim() or crashed, "gave up after 3 failed attempt(s)", stage="training")
    ledger.close()
    version(layout, "v0001", "base", str(tiny_model))
    version(layout, "v0002", "v0001", str(tiny_model))
    os.symlink("v0002", layout.current_model)
    control.set_wish(layout, control.Desired.PAUSED, "test")
    upload = write_jsonl(tmp_path / "up" / "uploaded.jsonl", chat_rows(4))

    with daemon(base) as d:
        info = wait_for(lambda: (lambda i: i if i and i.get("pid") == d.pid else None)(
            json.loads((layout.run / "server.json").read_text()) if (layout.run / "server.json").exists() else None),
            timeout=60, what="run/server.json")
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        page.on("dialog", lambda dlg: dlg.accept())
        page.goto(info["url"])
        page.fill("#token-input", read_token(layout) or "")
        page.click("#token-save")
        # Paused with work waiting says so, not "Nothing is training. Drop a file".
        wait_page(page, "document.getElementById('job-empty-note').textContent.includes('Paused: 2 file(s) wait')",
                  30, "the paused-with-queued-work note")
        assert page.is_hidden("#job-empty-default")
        # History: the done time and the version the job produced.
        wait_page(page, f"!!document.querySelector('#history-table tr[data-id=\"{done.id}\"]')", 30, "history row")
        row = page.inner_text(f"#history-table tr[data-id='{done.id}']")
        assert "v0002" in row
        assert page.is_visible("#gn-chart")

        page.select_option(f"#queue-table tr[data-id='{keep.id}'] select.prio-select", "high")
        wait_for(lambda: where(layout, keep.id) == f"queued/high/{keep.id}", timeout=30, what="moved to high")

        page.click(f"#queue-table tr[data-id='{drop.id}'] .act-remove")
        wait_for(lambda: where(layout, drop.id) is None, timeout=30, what="removed")

        wait_page(page, f"!!document.querySelector('#failed-list li[data-id=\"{crashed.id}\"] .act-requeue')", 30,
                  "the failed job's requeue button")
        page.click(f"#failed-list li[data-id='{bad.id}'] .act-requeue")  # still invalid: the queue refuses
        wait_page(page, "document.getElementById('toast').textContent.includes('refused: ')", 30,
                  "the queue's refusal on the page")
        assert where(layout, bad.id) == f"failed/{bad.id}"
        page.click(f"#failed-list li[data-id='{crashed.id}'] .act-requeue")
        wait_for(lambda: (where(layout, crashed.id) or "").startswith("queued/"), timeout=30, what="requeued")

        page.set_input_files("#upload-input", str(upload))
        wait_for(lambda: any(r.meta().original_name == "uploaded.jsonl" for r in Queue(layout, QueueConfig())
                             .list()), timeout=30, what="the uploaded file queued")

        wait_page(page, "!!document.querySelector('.act-rollback[data-version=\"v0001\"]')", 30, "rollback button")
        page.click(".act-rollback[data-version='v0001']")
        wait_for(lambda: os.readlink(layout.current_model) == "v0001", timeout=30, what="rolled back")
        # The page reports the outcome it read back from the daemon.
        wait_page(page, "document.getElementById('toast').textContent.includes('roll back to v0001: done')", 30,
                  "the rollback's outcome on the page")
        artifacts = Path(__file__).resolve().parent / "artifacts"
        artifacts.mkdir(exist_ok=True)
        page.screenshot(path=str(artifacts / "dashboard-controls.png"), full_page=True)
        page.close()
        d.terminate()
        assert d.wait(60) == 0, daemon_log(base)
    outcomes = sorted((layout.control / "actions" / "done").glob("*.json"))
    assert [atomic.read_json(p)["action"] for p in outcomes] == ["move", "remove", "requeue", "requeue", "rollback"]
