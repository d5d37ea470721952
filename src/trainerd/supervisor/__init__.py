"""The daemon's supervisor (trainerd.supervisor.loop): the main loop, its running
workers, the attempt policy's actions, and its status report, one module each."""

from __future__ import annotations

from trainerd.supervisor.loop import EXIT_PAUSED, Supervisor, run_daemon

__all__ = ["EXIT_PAUSED", "Supervisor", "run_daemon"]
