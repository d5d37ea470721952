"""powerfs: mount it, cut its power, mount what survived (tests/chaos/powerfs/fs.py serves it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[3]
FUSERMOUNT = "fusermount3"


def unavailable() -> str | None:
    """Why powerfs cannot run here (None: it can), in words a skip message can carry."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine (power-cut tests need FUSE)"
    if shutil.which(FUSERMOUNT) is None:
        return "fusermount3 not found: install the Debian package fuse3 (scripts/test.sh does, as root)"
    p = subprocess.run([sys.executable, "-c", "import mfusepy"], capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return f"the FUSE binding mfusepy cannot be imported ({last}); pip install mfusepy (scripts/test.sh does)"
    return None


class MountError(Exception):
    pass


class PowerMount:
    """One powerfs at `work/mnt`, its state in `work/fs`; remounted after every cut."""

    def __init__(self, work: Path):
        self.mount = work / "mnt"
        self.state = work / "fs"
        self.server: subprocess.Popen | None = None
        self.mount.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ mount / unmount
    def start(self, tree: Path | None = None, timeout: float = 60) -> None:
        cmd = [sys.executable, "-m", "tests.chaos.powerfs.fs", str(self.mount), str(self.state)]
        if tree is not None:
            cmd += ["--import", str(tree)]
        with open(self.state / "server.log", "ab") as err:
            self.server = subprocess.Popen(cmd, cwd=ROOT, stdout=err, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.mounted():
            if self.server.poll() is not None or time.monotonic() > deadline:
                tail = (self.state / "server.log").read_text(errors="replace")[-3000:]
                rc = self.server.poll()
                self.stop()
                raise MountError(f"powerfs did not mount {self.mount} (server exit {rc}):\n{tail}")
            time.sleep(0.05)

    def mounted(self) -> bool:
        """From the mount table: a powered-off powerfs answers stat() with EIO."""
        try:
            with open("/proc/self/mountinfo") as f:
                return any(line.split()[4] == str(self.mount) for line in f)
        except OSError:
            return os.path.ismount(self.mount)

    def stop(self, timeout: float = 30) -> None:
        """Unmount (processes using it must be gone) and wait for the server."""
        if self.mounted():
            p = subprocess.run([FUSERMOUNT, "-u", str(self.mount)], capture_output=True, text=True)
            if p.returncode != 0:  # still busy: detach now, the kernel drops it when free
                subprocess.run([FUSERMOUNT, "-u", "-z", str(self.mount)], capture_output=True)
        if self.server is not None:
            try:
                self.server.wait(timeout)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
            self.server = None

    def remount(self) -> dict[str, Any]:
        """After a cut (and every process using the mount killed): a fresh mount of what
        survived. Returns the cut's record."""
        info = self.cut_info()
        if info is None:
            raise MountError(f"remount without a cut ({self.state / 'cut.json'} missing)")
        self.stop()
        for old in self.state.glob("store-*"):
            shutil.rmtree(old, ignore_errors=True)
        (self.state / "cut.json").unlink()
        self.start(tree=self.state / "crash")
        shutil.rmtree(self.state / "crash", ignore_errors=True)  # its files moved into the new store
        return info

    # ------------------------------------------------------------ control
    def command(self, **cmd: Any) -> None:
        fd = os.open(self.mount / ".powerfs", os.O_WRONLY)
        try:
            os.write(fd, json.dumps(cmd).encode())
        finally:
            os.close(fd)

    def sync(self) -> None:
        self.command(cmd="sync")

    def cut(self, mode: str, seed: int, tag: str) -> dict[str, Any]:
        self.command(cmd="cut", mode=mode, seed=seed, tag=tag)
        info = self.cut_info()
        if info is None:
            raise MountError("cut command accepted but no cut.json written")
        return info

    def crash_state(self, mode: str, seed: int, to: Path) -> Path:
        """What a cut now would leave, as a folder (the filesystem stays up)."""
        self.command(cmd="crash", mode=mode, seed=seed, to=str(to))
        return to

    def arm(self, ops: list[str], path: str, after: int, mode: str, seed: int, tag: str) -> None:
        self.command(cmd="arm", ops=ops, path=path, after=after, mode=mode, seed=seed, tag=tag)

    def cut_info(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.state / "cut.json").read_text())
        except (OSError, ValueError):
            return None

    def users(self) -> list[psutil.Process]:
        """Every process with a file, cwd or mapping under the mount."""
        out, prefix = [], str(self.mount) + os.sep
        for p in psutil.process_iter():
            if p.pid == os.getpid():
                continue
            with contextlib.suppress(psutil.Error, OSError):
                paths = [f.path for f in p.open_files()] + [p.cwd()]
                if any(x == str(self.mount) or x.startswith(prefix) for x in paths):
                    out.append(p)
        return out

    def kill_users(self, also: list[int] = ()) -> int:
        """The power cut's other half: every process using the filesystem dies at once."""
        victims = {p.pid: p for p in self.users()}
        for pid in also:
            with contextlib.suppress(psutil.Error):
                victims.setdefault(pid, psutil.Process(pid))
                for c in victims[pid].children(recursive=True):
                    victims.setdefault(c.pid, c)
        for p in victims.values():
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(list(victims.values()), timeout=30)
        return len(victims)
