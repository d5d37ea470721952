import json
import os
import re
import signal
import subprocess
import urllib.request

import pytest

from tests.conftest import (
    chat_rows,
    cli,
    daemon,
    daemon_log,
    make_base,
    trainerd_cmd,
    wait_for,
    write_jsonl,
)


def _status(base):
    return json.loads(cli("status", "--base-dir", base, "--json").stdout)


def test_running_comes_from_the_lock_and_a_frozen_daemon_is_not_responding(base):
    assert _status(base)["daemon"]["running"] is False
    d = subprocess.Popen([*trainerd_cmd(), "run", "--base-dir", str(base)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        s = wait_for(lambda: (lambda s: s if s["daemon"].get("state") == "idle" else None)(_status(base)),
                     what="idle daemon")
        assert s["daemon"]["running"] and s["daemon"]["responding"] and s["daemon"]["pid"] == d.pid
        d.send_signal(signal.SIGSTOP)  # alive, holding the lock, but its loop is not turning
        s = wait_for(lambda: (lambda s: s if not s["daemon"]["responding"] else None)(_status(base)),
                     what="not responding", timeout=30)
        assert s["daemon"]["running"]
        assert "NOT RESPONDING" in cli("status", "--base-dir", base).stdout
        d.send_signal(signal.SIGCONT)
        wait_for(lambda: _status(base)["daemon"]["responding"], what="responding again")
        d.kill()  # kill -9: no clean-up at all
        d.wait()
        s = _status(base)
        assert s["daemon"]["running"] is False  # no stale "training"/"running" after a crash
        assert "not running" in cli("status", "--base-dir", base).stdout
    finally:
        if d.poll() is None:
            d.kill()


def test_sighup_reloads_a_good_config_and_keeps_the_running_one_on_a_bad_one(base):
    from tests.conftest import daemon_log, start_daemon

    d = start_daemon(base)
    try:
        wait_for(lambda: _status(base)["daemon"].get("state") == "idle", what="idle daemon")
        cfg = base / "trainerd.toml"
        good = cfg.read_text()
        cfg.write_text(good.replace("settle_seconds = 0", "settle_seconds = 1"))
        d.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: config reloaded" in daemon_log(base), what="reload")
        cfg.write_text(good + "\n[train]\nmethod = 'nope'\n")
        d.send_signal(signal.SIGHUP)
        wait_for(lambda: "config not reloaded, the running config stays" in daemon_log(base), what="refusal")
        assert d.poll() is None and _status(base)["daemon"]["responding"]
    finally:
        d.terminate()
        assert d.wait(30) == 0


def test_main_loop_survives_its_own_exceptions(base):
    import json
    import os

    from tests.conftest import start_daemon

    d = start_daemon(base)
    try:
        wait_for(lambda: _status(base)["daemon"].get("state") == "idle", what="idle daemon")
        active = base / "jobs" / "active"
        os.rename(active, base / "jobs" / "active.moved")
        active.write_text("not a folder")  # every claim now fails inside the loop
        st = wait_for(lambda: (lambda s: s if s.get("loop_errors") else None)(
            json.loads((base / "run" / "status.json").read_text())), what="a counted loop error")
        assert "NotADirectoryError" in st["last_error"]
        active.unlink()
        os.rename(base / "jobs" / "active.moved", active)
        wait_for(lambda: json.loads((base / "run" / "status.json").read_text())["loop_errors"] == 0,
                 what="recovered", timeout=60)
        assert d.poll() is None
        assert "main loop error" in (base / "logs" / "trainerd.log").read_text()
    finally:
        d.terminate()
        assert d.wait(30) == 0


def _queued_meta(base):
    from trainerd.paths import Layout

    layout = Layout.at(base)
    for p in ("high", "normal", "low"):
        for name in os.listdir(layout.queued(p)):
            return json.loads((layout.queued(p) / name / "job.json").read_text())
    return None


@pytest.mark.slow
def test_a_job_waiting_out_its_back_off_says_why_everywhere(tmp_path, tiny_model):
    """A real worker killed mid-job: status, queue list and the dashboard's /api/status all
    say when the next try is, which attempt it will be, and why it waits."""
    base = make_base(tmp_path / "b", tiny_model, "[queue]\nbackoff_seconds = [300]\n"
                     "[train]\nmicro_batch_size = 1\n")
    write_jsonl(base / "inbox" / "w.jsonl", chat_rows(200, "wait"))
    with daemon(base) as d:
        def training_pid():
            for p in (base / "jobs" / "active").iterdir():
                meta = json.loads((p / "job.json").read_text())
                if (p / "progress.json").exists() and meta["attempts"]:
                    return meta["attempts"][-1]["pid"]
            return None

        os.kill(wait_for(training_pid, 240, what="a worker training"), signal.SIGKILL)
        wait_for(lambda: _queued_meta(base), 120, what="the job back in the queue")
        want = re.compile(r"next try in [45] min \(attempt 2, back-off after a crash\)")
        wide = dict(os.environ, COLUMNS="400")
        assert want.search(cli("status", "--base-dir", base, env=wide).stdout)
        assert want.search(cli("queue", "list", "--base-dir", base, env=wide).stdout)
        info = json.loads((base / "run" / "server.json").read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{info['port']}/api/status", timeout=30) as r:
            api = json.loads(r.read())
        assert want.fullmatch(api["queued"][0]["waiting"])
        d.send_signal(signal.SIGTERM)
        assert d.wait(timeout=120) == 0, daemon_log(base)
