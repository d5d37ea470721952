"""Inbox entries the daemon cannot or must not read, with real permissions and real processes.

Tests run as root here, and root reads a mode-000 file anyway, so the permission test forks
a child that drops to the `nobody` user before it calls Queue.ingest(): the denial comes
from the kernel, not from a monkeypatched os.open.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import tempfile
import time
import traceback
from pathlib import Path

import pytest

from tests.conftest import chat_rows, daemon_log, make_base, start_daemon, wait_for, write_jsonl
from trainerd.config import QueueConfig
from trainerd.jobs import DATA, ERROR_JSON, JobMeta
from trainerd.paths import Layout
from trainerd.queue import ORIGINAL, REJECTED_MARK, Queue


def _error_reason(job_dir: Path) -> str:
    return json.loads((job_dir / ERROR_JSON).read_text())["reason"]


def _by_name(folder: Path) -> dict[str, Path]:
    return {JobMeta.load(folder / d).original_name: folder / d for d in os.listdir(folder)}


@pytest.fixture
def open_base():
    """A base dir every user can write to: pytest's tmp_path sits under a 0700 folder."""
    top = Path(tempfile.mkdtemp(prefix="trainerd-perm-")).resolve()
    try:
        layout = Layout.at(top / "base")
        layout.ensure()
        for d in (top, layout.base, layout.jobs, layout.jobs / "queued", *layout.dirs()):
            os.chmod(d, 0o777)
        yield layout
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _ingest_as(uid: int, gid: int, layout: Layout, probe: Path) -> dict:
    """Fork, drop to uid/gid, check `probe` is really unreadable, run Queue.ingest()."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(r)
            try:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            except OSError as e:
                result = {"skip": f"cannot drop privileges to uid {uid}/gid {gid}: {e}"}
            else:
                try:
                    os.close(os.open(probe, os.O_RDONLY))
                    result = {"skip": f"uid {uid} can still read a mode-000 file owned by root "
                                      "(capabilities kept?); no permission is denied here"}
                except PermissionError:
                    refs = Queue(layout, QueueConfig(settle_seconds=0)).ingest()
                    result = {"uid": os.geteuid(),
                              "refs": [[ref.meta().original_name, ref.state.value, str(ref.path)] for ref in refs]}
        except BaseException:
            result = {"error": traceback.format_exc()}
            code = 1
        try:
            os.write(w, json.dumps(result).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    os.waitpid(pid, 0)
    return json.loads(raw or b'{"error": "the child wrote nothing"}')


def test_unreadable_inbox_file_is_rejected_as_permission_denied_and_good_ones_flow(open_base):
    layout = open_base
    secret = layout.inbox / "secret.jsonl"
    write_jsonl(secret, chat_rows(2))
    os.chmod(secret, 0o000)
    good = write_jsonl(layout.inbox / "good.jsonl", chat_rows(3))
    os.chmod(good, 0o644)
    assert os.stat(secret).st_uid == os.geteuid()

    if os.geteuid() == 0:
        try:
            import pwd

            nobody = pwd.getpwnam("nobody")
        except (ImportError, KeyError):
            pytest.skip("running as root and there is no `nobody` user to drop privileges to")
        result = _ingest_as(nobody.pw_uid, nobody.pw_gid, layout, secret)
        if "skip" in result:
            pytest.skip(result["skip"])
        assert "error" not in result, result.get("error")
        assert result["uid"] == nobody.pw_uid
        taken = {name: (state, Path(path)) for name, state, path in result["refs"]}
    else:  # not root: the kernel already denies us a mode-000 file, unless we hold capabilities
        try:
            os.close(os.open(secret, os.O_RDONLY))
            pytest.skip("this user can read a mode-000 file (capabilities?); no permission is denied here")
        except PermissionError:
            pass
        refs = Queue(layout, QueueConfig(settle_seconds=0)).ingest()
        taken = {ref.meta().original_name: (ref.state.value, ref.path) for ref in refs}

    assert set(taken) == {"secret.jsonl", "good.jsonl"}
    state, path = taken["secret.jsonl"]
    assert state == "failed" and path.parent == layout.failed
    reason = _error_reason(path)
    assert "permission denied" in reason.lower() and reason.startswith("secret.jsonl:")
    kept = path / ORIGINAL  # moved, never read: still root's mode-000 file
    assert stat.S_IMODE(os.lstat(kept).st_mode) == 0 and os.lstat(kept).st_uid == os.geteuid()
    assert not (path / DATA).exists()

    state, path = taken["good.jsonl"]
    assert state == "queued" and path.parent == layout.queued("normal")
    assert JobMeta.load(path).examples == 3 and (path / DATA).is_file()

    assert os.listdir(layout.inbox) == []  # nothing left behind, no .rejected.json note
    assert os.listdir(layout.incoming) == []
    assert not any(n.endswith(REJECTED_MARK) for n in os.listdir(layout.inbox))


@pytest.mark.slow
def test_running_daemon_rejects_link_fifo_and_empty_file_and_keeps_training(tmp_path, tiny_model):
    base = make_base(tmp_path / "base", tiny_model)
    layout = Layout.at(base)
    proc = start_daemon(base)
    try:
        wait_for(lambda: layout.status.exists() or proc.poll() is not None, 30, what="daemon start")
        assert proc.poll() is None, daemon_log(base)

        os.symlink("/etc/passwd", layout.inbox / "passwd.jsonl")
        os.mkfifo(layout.inbox / "pipe.jsonl")
        (layout.inbox / "empty.jsonl").write_bytes(b"")
        wait_for(lambda: len(os.listdir(layout.failed)) >= 3 or proc.poll() is not None, 30,
                 what="three rejections")
        assert proc.poll() is None, daemon_log(base)
        failed = _by_name(layout.failed)
        assert set(failed) == {"passwd.jsonl", "pipe.jsonl", "empty.jsonl"}
        assert "symlink" in _error_reason(failed["passwd.jsonl"])
        assert "not a regular file" in _error_reason(failed["pipe.jsonl"])
        assert "no examples" in _error_reason(failed["empty.jsonl"])
        link = failed["passwd.jsonl"] / ORIGINAL  # kept as a link, never followed
        assert os.path.islink(link) and os.readlink(link) == "/etc/passwd"
        assert stat.S_ISFIFO(os.lstat(failed["pipe.jsonl"] / ORIGINAL).st_mode)
        assert os.listdir(layout.inbox) == []

        time.sleep(0.5)  # a few more loop ticks over the rejected entries' aftermath
        assert proc.poll() is None, daemon_log(base)
        write_jsonl(layout.inbox / "good.jsonl", chat_rows(8))
        wait_for(lambda: os.listdir(layout.done) or proc.poll() is not None, 50, what="the good file to train")
        assert proc.poll() is None, daemon_log(base)
        [done] = os.listdir(layout.done)
        assert JobMeta.load(layout.done / done).original_name == "good.jsonl"
        assert len(os.listdir(layout.failed)) == 3
        assert "main loop error" not in daemon_log(base)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except Exception:
            proc.kill()
            proc.wait()
            raise
    assert rc == 0, daemon_log(base)
