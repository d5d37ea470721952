"""Rollback moves only the pointer, and only to a version that verifies."""

from __future__ import annotations

import os

import pytest

from tests.line.conftest import line
from trainerd.line.errors import LineError
from trainerd.line.rollback import rollback
from trainerd.line.versions import current_name


def test_rollback_moves_only_the_pointer(layout):
    line(layout)
    before = sorted(os.listdir(layout.models))
    assert rollback(layout, "v0002") == {"from": "v0005", "to": "v0002"}
    assert os.readlink(layout.current_model) == "v0002"
    assert sorted(os.listdir(layout.models)) == before  # every version kept
    assert rollback(layout, "base")["to"] == "base"
    assert current_name(layout) is None
    with pytest.raises(LineError, match="no such version"):
        rollback(layout, "v0042")
    with pytest.raises(LineError, match="not a version name"):
        rollback(layout, "../etc")


def test_rollback_refused_while_a_worker_trains(layout):
    import fcntl

    line(layout)
    job = layout.active / "20261123T000000-000001-x"
    job.mkdir(parents=True)
    fd = os.open(job / ".worker.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a live worker holds
    try:
        with pytest.raises(LineError, match="is training"):
            rollback(layout, "v0001")
    finally:
        os.close(fd)
    assert rollback(layout, "v0001")["to"] == "v0001"  # a paused job does not block
