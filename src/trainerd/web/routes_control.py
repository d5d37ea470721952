"""The writes other than uploads, each behind the token: the daemon's wish (pause, resume,
stop), a skip, the queue and model-line edits (written as wishes the daemon carries out),
and generate/compare (answered by a child process: this one never loads torch)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from trainerd import ask, control, wishes
from trainerd.control import Desired
from trainerd.jobs import JobState
from trainerd.queue import JOB_ID
from trainerd.web.common import HttpError
from trainerd.web.deps import json_object, reader, require_token
from trainerd.web.reads import Reader
from trainerd.web.respond import JSON
from trainerd.web.schemas import ControlBody, ControlDone, Error, WishBody, WishQueued

REASON_MAX = 500
DESIRED = {"pause": Desired.PAUSED, "resume": Desired.RUNNING, "stop": Desired.STOPPED}
AUTH: dict[int | str, dict[str, Any]] = {401: {"model": Error}, 400: {"model": Error}, 413: {"model": Error}}

router = APIRouter(dependencies=[Depends(require_token)], responses=AUTH)
R = Annotated[Reader, Depends(reader)]
Body = Annotated[dict[str, Any], Depends(json_object)]


def _body_doc(model: type) -> dict[str, Any]:
    # The body is read by json_object (size-checked before it is read), not by FastAPI, so
    # its schema is documented by hand.
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _control(r: Reader, action: str, body: dict[str, Any]) -> dict[str, Any]:
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise HttpError(400, "reason must be a string")
    reason = (reason or "").strip()[:REASON_MAX] or "dashboard"
    if action == "skip":
        # Same rule as `trainerd skip`: the skip names the job active right now.
        active = r.queue().list(JobState.ACTIVE)
        if not active:
            raise HttpError(409, "no job is active, so there is nothing to skip")
        skip = control.request_skip(r.layout, active[0].id, reason)
        return {"ok": True, "action": "skip", "job_id": skip.job_id, "reason": reason}
    wish = control.set_wish(r.layout, DESIRED[action], reason)
    return {"ok": True, "action": action, "desired": wish.state.value, "reason": wish.reason}


def _wish(r: Reader, action: str, body: dict[str, Any]) -> dict[str, Any]:
    """A queue or model-line edit, written as a wish (trainerd.wishes): 202, the daemon
    carries it out; GET /api/control/actions/<id> gives the outcome."""
    args = {k: body.get(k) for k in ("job_id", "priority", "version") if body.get(k) is not None}
    job_id = args.get("job_id")
    if job_id is not None and not (isinstance(job_id, str) and JOB_ID.fullmatch(job_id)):
        raise HttpError(400, "job_id must be a job id, like 20261123T101500-123456-name")
    try:
        w = wishes.request(r.layout, action, **args)
    except wishes.WishError as e:
        raise HttpError(400, str(e)) from None
    return {"ok": True, "action": action, "wish": w["id"], "state": "pending", "args": args,
            "outcome": f"/api/control/actions/{w['id']}"}


def _control_route(action: str) -> None:
    def handler(r: R, body: Body) -> dict[str, Any]:
        return _control(r, action, body)

    router.add_api_route(f"/api/control/{action}", handler, methods=["POST"], name=f"control_{action}",
                         response_model=ControlDone, response_model_exclude_unset=True,
                         responses={409: {"model": Error}} if action == "skip" else None,
                         openapi_extra=_body_doc(ControlBody),
                         summary=f"{action.capitalize()} (a wish the daemon converges to)"
                         if action != "skip" else "Skip the active job")


def _wish_route(action: str) -> None:
    def handler(r: R, body: Body) -> dict[str, Any]:
        return _wish(r, action, body)

    router.add_api_route(f"/api/control/{action}", handler, methods=["POST"], name=f"wish_{action}",
                         status_code=202, response_model=WishQueued, openapi_extra=_body_doc(WishBody),
                         summary=f"{action.capitalize()}: a wish the daemon carries out; 202")


for _action in (*DESIRED, "skip"):
    _control_route(_action)
for _action in wishes.ACTIONS:
    _wish_route(_action)


@router.post("/api/generate", responses={429: {"model": Error}},
             summary="Answer a prompt with a version (trainerd.ask, in a child process)")
def api_generate(r: R, body: Body) -> JSON:
    code, out = ask.web_generate(r.layout, body)
    return JSON(out, status_code=code)


@router.post("/api/compare", responses={429: {"model": Error}},
             summary="Compare two versions on the probe set (trainerd.ask, in a child process)")
def api_compare(r: R, body: Body) -> JSON:
    code, out = ask.web_compare(r.layout, body)
    return JSON(out, status_code=code)
