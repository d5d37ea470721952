"""The daemon never loads the training stack: a real `trainerd run` trains a job through
its worker while this test reads the daemon's /proc/<pid>/maps over and over (and once
more at the end). libtorch must never be mapped there. The same reading of the worker's
maps must find it, or the check would prove nothing."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import chat_rows, daemon, daemon_log, make_base, write_jsonl
from trainerd.paths import Layout

pytestmark = pytest.mark.slow

TORCH_LIB = re.compile(r"/(libtorch\w*|libc10\w*)\.so")  # torch/lib/libtorch_cpu.so, libc10.so, ...


def torch_libs(pid: int) -> set[str]:
    """The libtorch shared objects mapped into process `pid` now (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return set()
    return {m.group(1) for m in TORCH_LIB.finditer(text)}


def test_the_daemon_trains_a_job_without_ever_mapping_libtorch(tmp_path, tiny_model):
    base = make_base(tmp_path / "b", tiny_model)
    layout = Layout.at(base)
    write_jsonl(base / "inbox" / "alpha.jsonl", chat_rows(8, "alpha"))
    samples, in_worker = 0, set()
    with daemon(base) as d:
        deadline = time.monotonic() + 600
        while not (os.path.lexists(layout.current_model) and any(layout.done.iterdir())):
            assert d.poll() is None, f"daemon exited ({d.returncode}):\n{daemon_log(base)}"
            assert time.monotonic() < deadline, f"no version after 600 s:\n{daemon_log(base)}"
            assert not torch_libs(d.pid), f"the daemon mapped {torch_libs(d.pid)}"
            samples += 1
            for child in psutil.Process(d.pid).children(recursive=True):
                in_worker |= torch_libs(child.pid)
            time.sleep(0.05)
        time.sleep(1.0)  # the daemon has recorded the job and is idle again
        assert d.poll() is None, daemon_log(base)
        assert not torch_libs(d.pid), f"the daemon mapped {torch_libs(d.pid)} by the end"
        d.send_signal(signal.SIGTERM)
        assert d.wait(120) == 0, daemon_log(base)
    assert os.readlink(layout.current_model) == "v0001"
    assert samples >= 10, f"only {samples} samples of the daemon's maps"  # the run was watched throughout
    assert in_worker, "the worker never showed libtorch in its maps: the check is blind"
