"""The worker's exit status: what a failure is reported as."""

import errno
import json

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
