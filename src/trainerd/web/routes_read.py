"""The read endpoints: health, status, jobs, a job's step series, probe evals, models, and
a wish's outcome. No token: they change nothing (the Host check still applies)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from trainerd import wishes
from trainerd.web.common import HttpError
from trainerd.web.deps import reader
from trainerd.web.reads import EVALS_LIMIT, JOBS_LIMIT, MODELS_LIMIT, POINTS_DEFAULT, Reader
from trainerd.web.respond import JSON
from trainerd.web.schemas import (
    Error,
    Evals,
    Health,
    JobDetail,
    JobsPage,
    MetricsSeries,
    Models,
    Status,
)

router = APIRouter()
R = Annotated[Reader, Depends(reader)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Error}}
BAD: dict[int | str, dict[str, Any]] = {400: {"model": Error}}


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}},
            summary="200 while the supervisor loop beats, 503 when it is stale")
def healthz(r: R) -> JSON:
    ok, body = r.health()
    return JSON(Health.model_validate(body).model_dump(), status_code=200 if ok else 503)


@router.get("/api/status", response_model=Status, response_model_exclude_unset=True)
def api_status(r: R) -> dict[str, Any]:
    return r.status()


@router.get("/api/jobs", response_model=JobsPage, response_model_exclude_unset=True, responses=BAD,
            summary="Active and queued jobs in claim order, then finished ones, newest finish first")
def api_jobs(r: R, state: str = "all", limit: Annotated[int, Query(description="1..5000")] = JOBS_LIMIT,
             offset: int = 0) -> dict[str, Any]:
    return r.jobs(state, limit, offset)


@router.get("/api/jobs/{job_id}", response_model=JobDetail, response_model_exclude_unset=True,
            responses={**NOT_FOUND, 409: {"model": Error}})
def api_job(r: R, job_id: str) -> dict[str, Any]:
    return r.job(job_id)


@router.get("/api/metrics/{job_id}", response_model=MetricsSeries, responses={**NOT_FOUND, **BAD},
            summary="A job's step series (loss, lr, throughput, ...), downsampled to max_points")
def api_metrics(r: R, job_id: str, max_points: Annotated[int, Query(description="10..20000")] = POINTS_DEFAULT) -> dict[str, Any]:
    return r.metrics_series(job_id, max_points)


@router.get("/api/evals", response_model=Evals, response_model_exclude_unset=True, responses=BAD,
            summary="Probe evals of every job over time, oldest first")
def api_evals(r: R, limit: int = EVALS_LIMIT) -> dict[str, Any]:
    return r.evals(limit)


@router.get("/api/models", response_model=Models, response_model_exclude_unset=True, responses=BAD)
def api_models(r: R, limit: int = MODELS_LIMIT) -> dict[str, Any]:
    return r.models(limit)


@router.get("/api/control/actions/{wish_id}", responses=NOT_FOUND,
            summary="A queue or model-line edit's outcome: pending, done or failed")
def api_wish_outcome(r: R, wish_id: str) -> dict[str, Any]:
    found = wishes.outcome(r.layout, wish_id)
    if found is None:
        raise HttpError(404, "no such wish")
    return found
