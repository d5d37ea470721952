import json
import signal
import subprocess

from tests.conftest import cli, trainerd_cmd, wait_for


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
