"""Helpers of the web tests: real HTTP calls with urllib and raw sockets, jobs made with
the real Queue exactly as the daemon would."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import write_jsonl
from trainerd.config import QueueConfig
from trainerd.jobs import Priority
from trainerd.paths import Layout
from trainerd.queue import Queue
from trainerd.web.tokens import read_token


def call(url: str, method: str = "GET", data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url: str) -> dict:
    code, _h, body = call(url)
    assert code == 200, body
    return json.loads(body)


def auth(layout: Layout) -> dict[str, str]:
    return {"Authorization": f"Bearer {read_token(layout)}"}


def submit(layout: Layout, tmp: Path, name: str, rows: list[dict] | str,
           priority: Priority = Priority.NORMAL):
    src = tmp / "src" / name
    if isinstance(rows, str):
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(rows)
    else:
        write_jsonl(src, rows)
    return Queue(layout, QueueConfig()).submit(src, priority)


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def raw_post_headers_only(port: int, path: str, headers: dict[str, str], body: bytes) -> tuple[bytes, float]:
    """Send the headers and a few body bytes, then wait for an answer without sending more."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0 = time.monotonic()
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + \
            "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        s.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        elapsed = time.monotonic() - t0
        # Then the server closes: the unread body must not be parsed as a next request.
        s.settimeout(5)
        while s.recv(4096):
            pass
        return answer, elapsed
    finally:
        s.close()


def eval_row(attempt: int, step: int, ts: float, loss: float, exact: float, final: bool = False) -> dict:
    """A row as trainerd.worker.evals writes it to evals.jsonl."""
    return {"attempt": attempt, "step": step, "ts": ts, "final": final, "loss": loss, "exact_match": exact,
            "similarity": exact, "examples": 6, "tokens": 80, "generated": 4, "complete": True,
            "seconds": 0.5, "probe_sha": "abc", "samples": [{"line": 1, "exact": True, "similarity": 1.0,
                                                             "expected": "4", "generated": "4"}]}
