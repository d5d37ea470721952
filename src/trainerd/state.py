"""What the daemon is doing, as one type: the supervisor sets it, status.json carries it,
and status, watch, /metrics and the dashboard read it. One definition, so a new state
cannot be missed by one of its readers (two UI lists once missed "error" and
"consolidating")."""

from __future__ import annotations

from enum import Enum


class DaemonState(str, Enum):
    STARTING = "starting"
    IDLE = "idle"
    TRAINING = "training"
    CONSOLIDATING = "consolidating"  # housework: folding adapters into a new base
    PAUSED = "paused"  # by the user (trainerd pause, the dashboard)
    PAUSED_DISK = "paused_disk"  # free space under [guards]
    PAUSED_MODEL = "paused_model"  # the base model went missing or stopped loading
    ERROR = "error"  # the main loop raised; it retries with a back-off
    STOPPED = "stopped"

    @property
    def paused(self) -> bool:
        return self in (DaemonState.PAUSED, DaemonState.PAUSED_DISK, DaemonState.PAUSED_MODEL)


def parse(value: object) -> DaemonState | None:
    """The state status.json names, or None when it names none we know (an older or newer
    daemon wrote it): readers then show the raw string instead of guessing."""
    try:
        return DaemonState(value)
    except ValueError:
        return None


# The supervisor loop records a heartbeat at least every HEARTBEAT_INTERVAL_S (it caps its
# sleep at this, whatever queue.poll_seconds says), so a loop that has not beaten for five
# intervals is stuck, e.g. in a hung filesystem call. Deliberately not derived from the
# config: a health check (/healthz, trainerd_up) must not become lenient because someone set
# a long poll interval. Here, beside the states, because the daemon beats and the web reads.
HEARTBEAT_INTERVAL_S = 2.0
STALE_AFTER_S = 5 * HEARTBEAT_INTERVAL_S
