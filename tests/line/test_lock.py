"""run/models.lock excludes a second changer, across file descriptors."""

from __future__ import annotations

import os

import pytest

from tests.line.conftest import line
from trainerd.line.errors import Busy
from trainerd.line.lock import models_lock
from trainerd.line.rollback import rollback


def test_models_lock_serialises_changes(layout):
    line(layout)
    with models_lock(layout, "consolidation"), \
            pytest.raises(Busy, match="consolidation, pid"):
        rollback(layout, "v0001", lock_timeout=0.3)  # second fd: flock still excludes
    assert os.readlink(layout.current_model) == "v0005"
