"""Response models of the HTTP API: what /openapi.json documents and every route's answer
is checked against. Scripts read these shapes; a field renamed here breaks them.

The parts that are other modules' records (a job summary from trainerd.status, job.json,
a manifest, the forgetting matrix) are open models: their known fields are typed, the rest
pass through unchanged, so this file does not become a second owner of those formats.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trainerd.state import DaemonState


class Open(BaseModel):
    """A record whose other fields pass through as they are."""

    model_config = ConfigDict(extra="allow")


class Error(BaseModel):
    """Every answer other than 2xx: what went wrong, in a sentence to act on."""

    model_config = ConfigDict(extra="allow")
    error: str


class Health(BaseModel):
    ok: bool = Field(description="the supervisor loop's heartbeat is fresher than stale_after")
    heartbeat_age: float | None = Field(description="seconds since the last heartbeat (null: never)")
    stale_after: float


class Daemon(Open):
    running: bool
    state: DaemonState | str | None = Field(None, description="run/status.json's state while running")


class Desired(BaseModel):
    state: Literal["running", "paused", "stopped"]
    reason: str | None = None


class Disk(Open):
    free_bytes: int
    total_bytes: int
    used_bytes: int


class JobSummary(Open):
    """trainerd.status.job_summary, plus started_at / finished_at / train_seconds /
    last_outcome once a job has attempts, and version for done jobs in /api/jobs."""

    id: str
    state: Literal["queued", "active", "done", "failed"]


class ActiveJob(Open):
    id: str
    step: int | None = None
    max_steps: int | None = None
    eta_seconds: float | None = Field(None, description="null unless the daemon is training")


class Status(Open):
    """GET /api/status: trainerd.status.collect plus health, disk, now, version and the
    active job, flat."""

    daemon: Daemon
    desired: Desired
    queue: dict[str, int]
    active: list[JobSummary]
    queued: list[JobSummary]
    done: list[JobSummary]
    failed: list[JobSummary]
    model: Open
    health: Health
    disk: Disk
    now: float
    version: str
    job: ActiveJob | None


class JobsPage(BaseModel):
    state: str
    total: int
    offset: int
    limit: int
    jobs: list[JobSummary]


class JobDetail(BaseModel):
    summary: JobSummary
    job: dict[str, Any] = Field(description="job.json as the queue wrote it")
    error: dict[str, Any] | None = Field(description="error.json, for a failed job")
    progress: dict[str, Any] | None = Field(description="progress.json, for the active job")


class MetricsSeries(BaseModel):
    """GET /api/metrics/{job_id}: columns of equal length, one entry per (attempt, step)."""

    job_id: str
    state: str
    source: str | None = Field(description="state.db, metrics.jsonl, both joined by +, or null")
    total_points: int
    count: int
    max_steps: int | None
    examples_total: int | None
    series: dict[str, list[Any]]


class Evals(BaseModel):
    source: str | None
    count: int
    series: dict[str, list[Any]]
    latest: dict[str, Any] | None = Field(description="the newest eval, with its sample answers")


class Models(BaseModel):
    current: Open
    versions: list[Open]
    matrix: Open = Field(description="the forgetting matrix of this page (docs/EVALS.md)")
    gate_overrides: dict[str, Any]


class ControlBody(BaseModel):
    """POST /api/control/{pause,resume,stop,skip}: an optional reason."""

    model_config = ConfigDict(extra="allow")
    reason: str | None = None


class WishBody(BaseModel):
    """POST /api/control/{move,requeue,remove,rollback}: what the edit applies to."""

    model_config = ConfigDict(extra="allow")
    job_id: str | None = None
    priority: str | None = None
    version: str | None = None


class ControlDone(Open):
    ok: bool
    action: str
    reason: str


class WishQueued(BaseModel):
    ok: bool
    action: str
    wish: str
    state: Literal["pending"]
    args: dict[str, Any]
    outcome: str = Field(description="GET this path for the outcome")


class Uploaded(BaseModel):
    id: str
    state: Literal["queued"]
    priority: str
    examples: int


class UploadRejected(BaseModel):
    id: str
    state: Literal["failed"]
    error: str | None
    errors: list[dict[str, Any]]
    error_count: int | None
