"""systemd integration without libsystemd: the sd_notify datagram protocol and a unit file.

Type=notify: READY=1 once the lock is held and recovery is done; WATCHDOG=1 from the main
loop (so a wedged loop is restarted by systemd, not just a dead process); STOPPING=1 on
the way out; STATUS= a one-line summary for `systemctl status`.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from pathlib import Path


class Notifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        if addr and addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self.addr = addr
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_interval = int(usec) / 1e6 / 2 if usec and usec.isdigit() else None
        self._last_ping = 0.0

    def send(self, *fields: str) -> None:
        if not self.addr:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self.addr)
                s.sendall("\n".join(fields).encode())
        except OSError:
            pass  # systemd gone or not ours: never a reason to stop training

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def ping(self, status: str | None = None) -> None:
        """Called every loop tick; sends WATCHDOG=1 at half the configured interval."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> None:
        self.send("STOPPING=1")


def unit(base_dir: Path, user: str | None = None, stop_timeout_s: int = 900) -> str:
    base = Path(base_dir).resolve()
    exe = Path(sys.executable).parent / "trainerd"
    cmd = f"{shlex.quote(str(exe))} run --base-dir {shlex.quote(str(base))}"
    user_line = f"User={user}\n" if user else ""
    return f"""\
# trainerd for {base}
# Install: save as /etc/systemd/system/trainerd.service, then
#   systemctl daemon-reload && systemctl enable --now trainerd
[Unit]
Description=trainerd: continual fine-tuning of {base}
After=local-fs.target
Documentation=file://{base}/trainerd.toml

[Service]
Type=notify
NotifyAccess=main
{user_line}ExecStart={cmd}
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM to the daemon only; it asks the worker to checkpoint at the next step (warm
# stop). Whatever is left when the timeout ends is killed, and resumes from its last
# checkpoint at the next start.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={stop_timeout_s}
# The main loop pings the watchdog; a wedged loop is restarted, not only a dead process.
WatchdogSec=120
Restart=on-failure
RestartSec=10
Environment=HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

[Install]
WantedBy=multi-user.target
"""
