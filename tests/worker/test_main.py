"""The worker's exit status: what a failure is reported as."""

import errno
import json
import os

import pytest

from trainerd.jobs import WORKER_ERROR, ExitCode
from trainerd.worker.main import _crash


def test_a_full_disk_in_any_library_wording_is_disk_low_not_a_crash(tmp_path):
    """Found by the full-disk campaign: safetensors reports ENOSPC as its own error type,
    so a publish on a full disk counted as a crash (3 of them: job failed)."""
    safetensors_words = RuntimeError(  # SafetensorError's text when the disk is full
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    chained = RuntimeError("save failed")
    chained.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    for e in (safetensors_words, chained, OSError(errno.ENOSPC, "No space left on device")):
        assert _crash(tmp_path, e) == ExitCode.DISK_LOW
        assert json.loads((tmp_path / WORKER_ERROR).read_text())["kind"] == "disk_low"
    assert _crash(tmp_path, ValueError("a real bug")) == 1
    assert json.loads((tmp_path / WORKER_ERROR).read_text())["kind"] == "crash"


def test_torch_saves_wordless_full_disk_error_is_disk_low_where_the_disk_is_full(tmp_path, caplog):
    """Found by the disk campaign (seed 1213): a checkpoint on a full disk made torch.save
    raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos ..."), with no
    errno and no words for it, so the attempt counted as a crash (exit 1). The same real
    error is a disk-low exit where the job dir is below the daemon's own pause threshold,
    and still a crash once the disk has room."""
    import torch

    from tests.conftest import make_base, tmpfs
    from trainerd.paths import Layout

    layout = Layout.at(make_base(tmp_path / "b", "unused-model", "[disk]\nmin_free_mb = 1\n"))
    with tmpfs(tmp_path / "fs", 8) as mnt:
        job = mnt / "job"
        job.mkdir()
        try:
            with open(mnt / "fill", "wb") as f:
                while True:
                    f.write(b"x" * 65536)
                    f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
        os.truncate(mnt / "fill", os.path.getsize(mnt / "fill") - 64 * 1024)  # room for part of a save
        with pytest.raises(RuntimeError) as raised:
            torch.save({"w": torch.zeros(200_000)}, job / "optimizer.pt")
        assert "No space left" not in str(raised.value)  # what made the campaign's attempt a crash
        assert _crash(job, raised.value) == 1  # the library's words alone say nothing of the disk
        assert _crash(job, raised.value, layout) == ExitCode.DISK_LOW
        # worker-error.json cannot be written on that disk (the daemon reads the exit status)
        assert "unexpected pos" in caplog.text and "disk.min_free_mb" in caplog.text
        os.unlink(mnt / "fill")
        assert _crash(job, raised.value, layout) == 1  # room again: it is a crash after all
        assert _crash(job, MemoryError(), layout) != ExitCode.DISK_LOW
