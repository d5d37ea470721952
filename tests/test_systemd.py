import os
import signal
import socket
import subprocess

from tests.conftest import trainerd_cmd


def test_daemon_speaks_sd_notify_ready_watchdog_stopping(base, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sock_path)
    srv.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000")
    d = subprocess.Popen([*trainerd_cmd(), "run", "--base-dir", str(base)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got: list[str] = []
        while not any("WATCHDOG=1" in m for m in got):
            got.append(srv.recv(4096).decode())
        assert "READY=1" in got[0] and f"MAINPID={d.pid}" in got[0]
        assert any("STATUS=idle" in m for m in got)
        d.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in got[-1]:
            got.append(srv.recv(4096).decode())
        assert d.wait(30) == 0
    finally:
        if d.poll() is None:
            d.kill()
        srv.close()
