"""The job queue: ingest, claim, finish, fail, release, recover — renames only.

This package is the only code that moves job directories (DESIGN.md seams) and the only
writer of job.json. A job's state is the folder it is in; each transition is one rename
inside the base dir. Anything that edits a job.json outside the daemon (the CLI's
move/requeue) first renames the job into a private staging folder under jobs/.incoming/
and holds a flock on it, so the daemon can never claim a job while someone else is
rewriting it.

One concept per module: record (JobRef, the job-id rule, the job.json writer), listing
(folders, counts, ids, staging), intake (inbox and submit), transitions (the daemon's
claim/finish/fail/release and attempt records), recovery (after a crash), edits (the
user's move/remove/requeue).
"""

from __future__ import annotations

from trainerd.inbox import NOT_DELIVERED_SUFFIXES, REJECTED_MARK
from trainerd.queue.edits import Edits
from trainerd.queue.intake import ORIGINAL, Intake
from trainerd.queue.record import JOB_ID, JobRef, Progress, QueueError, save_meta
from trainerd.queue.recovery import Recovery
from trainerd.queue.transitions import Transitions

__all__ = ["JOB_ID", "NOT_DELIVERED_SUFFIXES", "ORIGINAL", "REJECTED_MARK", "Intake", "JobRef", "Progress",
           "Queue", "QueueError", "save_meta"]


class Queue(Recovery, Transitions, Edits):
    """The queue of one base dir: its intake, the daemon's transitions, recovery and the
    user's edits, over the folders of trainerd.paths.Layout."""
