"""The request guards: the token (a FastAPI dependency on every write), the Host check
against DNS rebinding, the common security headers, and body framing rules.

The Host check and the headers are one pure ASGI middleware (not BaseHTTPMiddleware) so
they cost nothing per request and see every answer, errors included. It also closes the
connection after any answer given before the request body was read to its end: a refused
2 GB upload must not be read, nor parsed as the next request.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trainerd import __version__
from trainerd.web.common import HttpError
from trainerd.web.reads import Reader
from trainerd.web.tokens import read_token

log = logging.getLogger("trainerd.web")

CONTROL_BODY_MAX = 16 * 1024  # {"reason": ...} never needs more
LOOPBACK_NAMES = ("localhost", "::1", "ip6-localhost")
BASE_HEADERS = [(b"Cache-Control", b"no-store"), (b"X-Content-Type-Options", b"nosniff"),
                (b"Server", f"trainerd/{__version__}".encode())]


def is_loopback(host: str) -> bool:
    h = host.strip("[]").lower()
    return h in LOOPBACK_NAMES or h.startswith("127.")


def host_ok(host: str | None, loopback: bool) -> bool:
    """DNS-rebinding guard while bound to loopback: the Host must name this machine."""
    if not loopback or not host:
        return True  # HTTP/1.0 clients send none; a browser always does
    name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    return is_loopback(name)


def reader(request: Request) -> Reader:
    return request.app.state.reader


BEARER = HTTPBearer(auto_error=False, scheme_name="token",
                    description="The contents of BASE/run/token (0600, made at the daemon's first start)")


def require_token(request: Request,
                  given: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    """Dependency of every write: `Authorization: Bearer <run/token>`, compared in constant
    time, read from disk per request (a rotated token takes effect at once). Through
    HTTPBearer, so /openapi.json says which routes need it."""
    token = read_token(reader(request).layout)
    if given is None or token is None or not hmac.compare_digest(given.credentials.strip().encode(), token.encode()):
        raise HttpError(401, "missing or wrong token: send 'Authorization: Bearer <BASE/run/token>'")


def content_length(request: Request) -> int | None:
    """The declared body length; chunked bodies are refused (every client here sends a length)."""
    if request.headers.get("transfer-encoding"):
        raise HttpError(411, "send the body with a Content-Length (chunked encoding is not supported)")
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise HttpError(400, "bad Content-Length")
    return int(raw)


async def json_object(request: Request) -> dict[str, Any]:
    """A small JSON object body (control, generate, compare); empty means {}."""
    length = content_length(request) or 0
    if length > CONTROL_BODY_MAX:
        raise HttpError(413, f"a control request body is at most {CONTROL_BODY_MAX} bytes")
    raw = await request.body() if length else b""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise HttpError(400, "body must be JSON, e.g. {\"reason\": \"...\"}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "body must be a JSON object")
    return body


class Guard:
    """Host check, common headers, and Connection: close after a body left unread."""

    def __init__(self, app: ASGIApp, loopback: bool):
        self.app, self.loopback = app, loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}
        if not host_ok(headers.get(b"host", b"").decode("latin-1") or None, self.loopback):
            body = json.dumps({"error": "this server answers only to localhost names while bound to "
                               "loopback"}).encode()
            await send({"type": "http.response.start", "status": 421, "headers": [
                (b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode()),
                (b"Connection", b"close"), *BASE_HEADERS]})
            await send({"type": "http.response.body", "body": body})
            return
        has_body = headers.get(b"transfer-encoding") is not None or \
            headers.get(b"content-length", b"0").strip() not in (b"", b"0")
        read_all = not has_body

        async def receive_counted() -> Message:
            nonlocal read_all
            msg = await receive()
            if msg["type"] == "http.request" and not msg.get("more_body", False):
                read_all = True
            return msg

        async def send_with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                extra = list(BASE_HEADERS)
                if not read_all:  # refused unread: it must not be parsed as the next request
                    extra.append((b"Connection", b"close"))
                msg = {**msg, "headers": [(_canonical(k), v) for k, v in msg.get("headers", [])] + extra}
            await send(msg)

        started = False

        async def send_tracked(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send_with_headers(msg)

        try:
            await self.app(scope, receive_counted, send_tracked)
        except Exception as e:
            # One request fails; the daemon goes on. Answered here (not by Starlette's
            # outermost handler) so the traceback is logged once and the answer is JSON.
            log.error("%s %s failed", scope.get("method"), scope.get("path"), exc_info=e)
            if started:
                raise  # half an answer was sent: the server closes the connection
            body = json.dumps({"error": f"internal error: {type(e).__name__}: {e}"}).encode()
            read_all = False  # whatever the body was, do not read on
            await send_with_headers({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send_with_headers({"type": "http.response.body", "body": body})


def _canonical(name: bytes) -> bytes:
    """Content-Type, not content-type: names are case-insensitive, but scripts written
    against the old server read them from a plain dict, as urllib hands them over."""
    if name == b"www-authenticate":
        return b"WWW-Authenticate"
    return b"-".join(p[:1].upper() + p[1:] for p in name.split(b"-"))

