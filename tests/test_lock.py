import os
import subprocess
import sys
import time

import pytest

from tests.conftest import tmpfs
from trainerd.lock import AlreadyRunning, DaemonLock, holder


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    p = tmp_path / "run" / "trainerd.lock"
    a = DaemonLock(p)
    a.acquire()
    try:
        assert holder(p).pid == os.getpid()
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()} since"):
            DaemonLock(p).acquire(retry_seconds=0.1)
    finally:
        a.release()
    assert holder(p) is None


def test_stale_lock_file_from_a_killed_process_does_not_block(tmp_path):
    p = tmp_path / "trainerd.lock"
    code = f"from trainerd.lock import DaemonLock; DaemonLock({str(p)!r}).acquire(); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 20
    while holder(p) is None and time.time() < deadline:
        time.sleep(0.05)
    assert holder(p) is not None and holder(p).pid == proc.pid
    proc.kill()
    proc.wait()
    assert p.exists()  # the file stays, with a dead pid in it ...
    assert holder(p) is None  # ... and nobody holds it
    lk = DaemonLock(p)
    lk.acquire()  # so a new daemon starts
    lk.release()


def test_twenty_concurrent_takers_exactly_one_wins(tmp_path):
    p = tmp_path / "trainerd.lock"
    code = (
        "import sys, time\n"
        "from trainerd.lock import DaemonLock, AlreadyRunning\n"
        f"l = DaemonLock({str(p)!r})\n"
        "try:\n    l.acquire()\nexcept AlreadyRunning:\n    sys.exit(3)\n"
        "time.sleep(6)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(20)]
    codes = [pr.wait(timeout=60) for pr in procs]
    assert codes.count(0) == 1 and codes.count(3) == 19, codes


def test_twenty_trainerd_runs_at_once_exactly_one_daemon(base):
    import signal

    from tests.conftest import trainerd_cmd

    procs = [subprocess.Popen([*trainerd_cmd(), "run", "--base-dir", str(base)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(20)]
    try:
        losers = []
        deadline = time.time() + 120
        while len(losers) < 19 and time.time() < deadline:
            losers = [p for p in procs if p.poll() is not None]
            time.sleep(0.2)
        assert len(losers) == 19, [p.poll() for p in procs]
        for p in losers:
            assert p.returncode == 3
            assert "already running (pid" in p.stderr.read()
        [winner] = [p for p in procs if p.poll() is None]
        assert holder(base / "run" / "trainerd.lock").pid == winner.pid
        winner.send_signal(signal.SIGTERM)
        assert winner.wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_a_full_disk_does_not_stop_the_lock_from_being_taken(tmp_path):
    """Found by the full-disk campaign (tests/chaos/disk.py): writing the pid into the lock
    file raised ENOSPC and a daemon started on a full disk died with a traceback. The flock
    is the truth; the pid is for people."""
    with tmpfs(tmp_path / "fs", 1) as mnt:
        path = mnt / "trainerd.lock"
        path.touch()
        with open(mnt / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
        lk = DaemonLock(path)
        lk.acquire()
        try:
            h = holder(path)
            assert h is not None  # held, even though the pid could not be written
            with pytest.raises(AlreadyRunning, match="pid"):
                DaemonLock(path).acquire(retry_seconds=0.1)
        finally:
            lk.release()
        assert holder(path) is None
