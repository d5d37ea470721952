"""`trainerd run` as a process: how it ends when signals keep coming."""

from __future__ import annotations

import signal
import time

from tests.conftest import daemon_log, make_base, start_daemon, wait_for
from trainerd import atomic
from trainerd.paths import Layout


def test_a_storm_of_sigterms_still_ends_in_exit_0(tmp_path, tiny_model):
    # systemd or an impatient operator may send SIGTERM again while the daemon is already
    # exiting. Once the stop is recorded, the interpreter's own exit must not be cut short
    # by the default action of SIGTERM (found by the signals campaign: -15 instead of 0).
    base = make_base(tmp_path / "b", tiny_model, '[schedule]\nsnapshot_at = "off"\n')
    d = start_daemon(base)
    lay = Layout.at(base)

    def up() -> bool:
        try:
            return atomic.read_json(lay.status).get("pid") == d.pid
        except (OSError, ValueError):
            return False

    wait_for(up, timeout=180, what="the daemon's first status.json")
    sent = 0
    deadline = time.monotonic() + 120
    while d.poll() is None and time.monotonic() < deadline:
        try:
            d.send_signal(signal.SIGTERM)
            sent += 1
        except ProcessLookupError:
            break
        time.sleep(0.005)
    rc = d.wait(30)
    assert sent >= 2, "the daemon exited before a second SIGTERM could reach it"
    assert rc == 0, f"exit {rc} after {sent} SIGTERMs:\n{daemon_log(base)[-3000:]}"
