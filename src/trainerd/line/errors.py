"""The errors the model line raises: what cannot be done as asked, and why."""

from __future__ import annotations


class LineError(Exception):
    """An operation on the model line that cannot be done as asked, with the reason and
    what to do."""


class Busy(LineError):
    """Another publish, rollback, snapshot, gc or consolidation holds run/models.lock."""
