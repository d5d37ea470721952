"""systemd integration without libsystemd: the sd_notify datagram protocol and a unit file.

Type=notify: READY=1 once the lock is held and recovery is done; WATCHDOG=1 from the main
loop (so a wedged loop is restarted by systemd, not just a dead process); STOPPING=1 on
the way out; STATUS= a one-line summary for `systemctl status`.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import socket
import sys
import time
from dataclasses import dataclass
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


# Exit statuses that a restart cannot cure: a bad trainerd.toml or a preflight refusal
# (trainerd run exits 2). Restarting those every RestartSec would only fill the journal.
NO_RESTART_STATUS = (2,)
HOME_ROOTS = ("/home", "/root", "/run/user")
GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


class UnitError(ValueError):
    """A unit that cannot be written as asked; the message says what to pass instead."""


@dataclass
class UnitSpec:
    base: Path
    user: str | None = None  # None: a --user-unit (systemctl --user runs it as its owner)
    group: str | None = None
    user_unit: bool = False
    stop_timeout_s: int = 900
    start_timeout_s: int = 900  # recovery of a big queue, or a slow disk, before READY=1
    hf_home: Path | None = None
    gpu: bool = False


def _under_home(p: Path) -> bool:
    return any(str(p) == r or str(p).startswith(r + "/") for r in HOME_ROOTS)


def default_hf_home(user: str | None) -> Path:
    """Where the service's HF cache is: $HF_HOME as set now, else ~USER/.cache/huggingface."""
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).resolve()
    home = Path(pwd.getpwnam(user).pw_dir) if user and _user_exists(user) else Path.home()
    return home / ".cache" / "huggingface"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def resolve_user(user: str | None, group: str | None, as_root: bool, user_unit: bool) -> tuple[str | None, str | None]:
    """User=/Group= for a system unit: --user NAME, else the invoking user; as root, --user
    or an explicit --as-root (a training daemon has no need of root)."""
    if user_unit:
        if user or group or as_root:
            raise UnitError("--user-unit runs as the user who installs it: drop --user/--group/--as-root")
        return None, None
    if as_root:
        if user:
            raise UnitError("--as-root and --user NAME contradict each other; pass one")
        return "root", group or "root"
    if user is None:
        if os.geteuid() == 0:
            raise UnitError("as root, pass --user NAME (a service user: `useradd --system --create-home "
                            "--home-dir /var/lib/trainerd trainerd`, then chown the base dir to it), "
                            "or --as-root to run the daemon as root on purpose")
        user = pwd.getpwuid(os.geteuid()).pw_name
    if group is None:
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name if _user_exists(user) else user
    return user, group


def _sandbox(spec: UnitSpec) -> list[str]:
    """Hardening that still lets training run: the base dir and the HF cache writable,
    everything else read-only or hidden (systemd-analyze security: exposure <= 4.5)."""
    hf = spec.hf_home or default_hf_home(spec.user)
    venv = Path(sys.prefix).resolve()
    rw = [spec.base, hf]
    ro = list(dict.fromkeys([venv, Path(sys.base_prefix).resolve()]))
    lines = [
        "UMask=0027",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        # '-': a cache that does not exist yet must not stop the start (offline runs need none).
        f"ReadWritePaths={_q(spec.base)} -{_q(hf)}",
        "PrivateTmp=yes",
    ]
    if any(_under_home(p) for p in rw + ro):
        # /home is replaced by an empty tmpfs; only what the daemon needs is bound back in.
        lines += ["ProtectHome=tmpfs"]
        binds = [p for p in rw if _under_home(p)]
        lines += [f"BindPaths={' '.join(('-' if p == hf else '') + _q(p) for p in binds)}"] if binds else []
        ro_binds = [p for p in ro if _under_home(p)]
        lines += [f"BindReadOnlyPaths={' '.join(map(_q, ro_binds))}"] if ro_binds else []
    else:
        lines += ["ProtectHome=yes"]
    if spec.gpu:
        # NVIDIA: /dev/nvidia0.. and the control devices; PrivateDevices would hide them.
        lines += ["PrivateDevices=no", "DevicePolicy=closed", "DeviceAllow=char-nvidia-frontend rw",
                  "DeviceAllow=char-nvidia-uvm rw", "DeviceAllow=char-nvidia-caps rw",
                  *(f"DeviceAllow={d} rw" for d in GPU_DEVICES)]
    else:
        lines += ["PrivateDevices=yes"]
    lines += [
        "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes", "ProtectClock=yes", "ProtectHostname=yes", "ProtectProc=invisible",
        # AF_INET/6: the HTTP server and a torchrun group's rendezvous; AF_UNIX: sd_notify.
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes", "RestrictRealtime=yes", "RestrictSUIDSGID=yes", "LockPersonality=yes",
        "PrivateMounts=yes", "RemoveIPC=yes", "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service", "SystemCallFilter=~@privileged @resources @mount @swap @reboot",
        "SystemCallErrorNumber=EPERM",
        "CapabilityBoundingSet=", "AmbientCapabilities=",
        # Not set, on purpose: MemoryDenyWriteExecute (breaks JIT kernels: triton, torch.compile),
        # PrivateNetwork / IPAddressDeny (the dashboard and /metrics must be reachable).
    ]
    if not spec.user_unit:
        lines += ["PrivateUsers=yes"]
    return lines


def _q(p: Path) -> str:
    return shlex.quote(str(p))


def unit(spec: UnitSpec) -> str:
    base = spec.base.resolve()
    spec.base = base
    exe = Path(sys.executable).parent / "trainerd"
    cmd = f"{shlex.quote(str(exe))} run --base-dir {shlex.quote(str(base))}"
    hf = spec.hf_home or default_hf_home(spec.user)
    who = [] if spec.user_unit else [f"User={spec.user}", f"Group={spec.group}"]
    where = ("~/.config/systemd/user/trainerd.service, then\n#   systemctl --user daemon-reload && "
             "systemctl --user enable --now trainerd\n#   (loginctl enable-linger $USER keeps it running "
             "after you log out)") if spec.user_unit else \
        "/etc/systemd/system/trainerd.service, then\n#   systemctl daemon-reload && systemctl enable --now trainerd"
    body = "\n".join([*who, *_sandbox(spec)])
    return f"""\
# trainerd for {base}
# Install: save as {where}
[Unit]
Description=trainerd: continual fine-tuning of {base}
After=local-fs.target
Documentation=file://{base}/trainerd.toml

[Service]
Type=notify
NotifyAccess=main
ExecStart={cmd}
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM to the daemon only; it asks the worker to checkpoint at the next step (warm
# stop). Whatever is left when the timeout ends is killed, and resumes from its last
# checkpoint at the next start.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={spec.stop_timeout_s}
# READY=1 comes after recovery (finishing half-done intakes, accounting for attempts):
# with a long queue on a slow disk that takes more than the default 90 s.
TimeoutStartSec={spec.start_timeout_s}
# The main loop pings the watchdog; a wedged loop is restarted, not only a dead process.
WatchdogSec=120
Restart=on-failure
RestartSec=10
# A bad config or a preflight refusal (exit 2) is not cured by a restart.
RestartPreventExitStatus={' '.join(map(str, NO_RESTART_STATUS))}
Environment=HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HOME={_q(hf)}
{body}

[Install]
WantedBy={'default.target' if spec.user_unit else 'multi-user.target'}
"""
