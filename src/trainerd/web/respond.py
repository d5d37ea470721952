"""How every JSON answer is written, and how every error becomes {"error": ...}."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from trainerd.web.common import HttpError, jsonable


class JSON(JSONResponse):
    """Compact JSON; NaN and inf become null (browsers reject them), and anything else that
    is not JSON (a Path, a datetime) is written as its string."""

    def render(self, content: Any) -> bytes:
        return json.dumps(jsonable(content), default=str, separators=(",", ":")).encode()


def error(code: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSON:
    headers = dict(headers or {})
    if code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="trainerd"'
    return JSON({"error": message, **extra}, status_code=code, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """A query parameter that is not what it should be, in the words of the old server
    ("limit must be an integer"), so scripts and people read the same sentence."""
    for e in exc.errors():
        name = str(e.get("loc", ("", "?"))[-1])
        if e.get("type") in ("int_parsing", "int_type", "int_from_float"):
            return f"{name} must be an integer"
        return f"{name}: {e.get('msg', 'invalid')}"
    return "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(HttpError)
    async def _http_error(_request: Request, exc: HttpError) -> JSON:
        return error(exc.code, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(HTTPException)
    async def _starlette(_request: Request, exc: HTTPException) -> JSON:
        allow = (exc.headers or {}).get("Allow", "another method")
        message = {404: "not found", 405: f"use {allow}"}.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSON:
        return error(400, _validation_message(exc))
