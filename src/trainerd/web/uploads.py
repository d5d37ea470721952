"""POST /api/queue?name=...&priority=...: a file sent over HTTP becomes a job exactly as an
inbox file does (Queue.submit(move=True): validated, hashed, rejected with line numbers).

Streamed: the size limit ([server] max_upload_mb) is decided from Content-Length before a
byte of the body is read (a 2 GB upload is refused at once, and the connection closed so
the rest is never read), and the bytes are counted again while they arrive; at most about
a megabyte is ever held in memory. The body goes to run/uploads/ (same filesystem as jobs/,
so the queue's rename is atomic); a partial upload is deleted, and any left by a crash are
deleted at the next start.

The queue's events for the new job (queued / rejected) are spooled (trainerd.eventspool)
for the daemon to record: this process never writes state.db.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from trainerd import eventspool
from trainerd.config import QueueConfig
from trainerd.jobs import ERROR_JSON, JobMeta, JobState, Priority
from trainerd.paths import Layout
from trainerd.queue import Queue
from trainerd.validate import TRAINED_SUFFIXES
from trainerd.web.common import HttpError, read_json_obj
from trainerd.web.deps import content_length, reader, require_token
from trainerd.web.reads import Reader
from trainerd.web.respond import JSON
from trainerd.web.schemas import Error, Uploaded, UploadRejected

log = logging.getLogger("trainerd.web.uploads")

UPLOAD_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")
UPLOADS_DIR = "uploads"  # run/uploads: partial uploads, same filesystem as jobs/ for the rename
UPLOAD_PREFIX, UPLOAD_SUFFIX = ".upload-", ".part"
UPLOAD_IDLE_S = 30.0  # seconds a client may stay silent mid-upload
WRITE_CHUNK = 1 << 20  # bytes gathered before each write (in a worker thread)
_submit_lock = threading.Lock()  # one id clock for concurrent uploads

router = APIRouter()


def upload_dir(layout: Layout) -> Path:
    d = layout.run / UPLOADS_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


def clean_uploads(layout: Layout) -> None:
    """Partial uploads from a previous run were never acknowledged; nobody waits for them."""
    d = layout.run / UPLOADS_DIR
    for p in d.glob(UPLOAD_PREFIX + "*" + UPLOAD_SUFFIX) if d.is_dir() else []:
        with contextlib.suppress(OSError):
            p.unlink()


def check_name(name: str) -> None:
    if not (UPLOAD_NAME_RE.fullmatch(name) and name.endswith(TRAINED_SUFFIXES) and ".." not in name
            and not name.startswith(".")):
        raise HttpError(400, "name must be a plain file name of letters, digits, '.', '_' or '-', "
                        "ending in .jsonl or .json (no '/', no '..')")


def submit(r: Reader, tmp: Path, name: str, priority: Priority) -> tuple[int, dict[str, Any]]:
    """Queue a fully received upload (renamed in: validated exactly like an inbox file)."""
    q = Queue(r.layout, QueueConfig(), on_event=functools.partial(eventspool.put, r.layout),
              data_map=r.data_map)
    with _submit_lock:
        ref = q.submit(tmp, priority, move=True, original_name=name)
    if ref.state == JobState.QUEUED:
        meta = JobMeta.load(ref.path)
        log.info("upload %s queued as %s (%s)", name, ref.id, priority.value)
        return 201, {"id": ref.id, "state": ref.state.value, "priority": priority.value, "examples": meta.examples}
    err = read_json_obj(ref.path / ERROR_JSON) or {}
    log.info("upload %s rejected as %s: %s", name, ref.id, err.get("reason"))
    return 422, {"id": ref.id, "state": ref.state.value, "error": err.get("reason"),
                 "errors": err.get("errors", []), "error_count": err.get("error_count")}


async def receive_to(request: Request, f: Any, length: int) -> None:
    """Write exactly `length` body bytes to `f`, counting as they come."""
    received, buf = 0, bytearray()
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), UPLOAD_IDLE_S)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise HttpError(408, "the upload stalled; send it again") from None
        except ClientDisconnect:
            raise HttpError(400, f"the body ended {length - received} bytes before its Content-Length") from None
        received += len(chunk)
        if received > length:
            raise HttpError(400, "the body is longer than its Content-Length")
        buf += chunk
        if len(buf) >= WRITE_CHUNK:
            await run_in_threadpool(f.write, bytes(buf))
            buf.clear()
    if received < length:
        raise HttpError(400, f"the body ended {length - received} bytes before its Content-Length")
    await run_in_threadpool(_finish, f, bytes(buf))


def _finish(f: Any, rest: bytes) -> None:
    f.write(rest)
    f.flush()
    os.fsync(f.fileno())


@router.post("/api/queue", dependencies=[Depends(require_token)], status_code=201, response_model=Uploaded,
             responses={422: {"model": UploadRejected}, **{c: {"model": Error} for c in (400, 401, 408, 411, 413)}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
             summary="Queue a .jsonl/.json file (the body), validated like an inbox file")
async def api_queue(request: Request, r: Annotated[Reader, Depends(reader)], name: str = "",
                    priority: str = "normal") -> JSON:
    check_name(name)
    try:
        prio = Priority(priority)
    except ValueError:
        raise HttpError(400, "priority must be high, normal or low") from None
    length = content_length(request)
    if length is None:
        raise HttpError(411, "Content-Length is required")
    limit = int(r.cfg.max_upload_mb * 1024 * 1024)
    if length > limit:
        # Decided from the header alone: the body is never read (the connection closes).
        raise HttpError(413, f"{length} bytes is over server.max_upload_mb = {r.cfg.max_upload_mb:g}; "
                        "drop large files into inbox/ instead", limit_bytes=limit)
    fd, tmp_name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=UPLOAD_SUFFIX, dir=upload_dir(r.layout))
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            await receive_to(request, f, length)
        code, body = await run_in_threadpool(submit, r, tmp, name, prio)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # gone already when the queue renamed it in
    return JSON(body, status_code=code)
