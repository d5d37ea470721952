"""Serving: uvicorn on a daemon thread of the supervisor, with the public start/stop API
(start_server, ServerHandle.stop) the supervisor calls.

The socket is bound here, in the caller's thread, so an address in use is an OSError the
caller logs (the daemon trains on without HTTP) and the port is known before we return.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn

from trainerd import atomic
from trainerd.config import DataMapConfig, ServerConfig
from trainerd.paths import Layout
from trainerd.web.app import create_app
from trainerd.web.common import read_json_obj
from trainerd.web.deps import is_loopback
from trainerd.web.reads import Reader
from trainerd.web.tokens import TOKEN_FILE, ensure_token
from trainerd.web.uploads import clean_uploads

log = logging.getLogger("trainerd.web")

SERVER_JSON = "server.json"
BACKLOG = 64
START_TIMEOUT_S = 15.0
GRACEFUL_S = 2.0  # a request still running at stop gets this long, then is cancelled
KEEPALIVE_S = 30  # the dashboard polls every 2 s on one connection


class _Uvicorn(uvicorn.Server):
    """uvicorn.Server that fails loudly when its thread dies before serving."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.failed: BaseException | None = None

    def run_in_thread(self, sock: socket.socket) -> None:
        try:
            self.run(sockets=[sock])
        except BaseException as e:  # reported by start_server; the daemon goes on
            self.failed = e
            log.exception("the HTTP server thread stopped")


@dataclass
class ServerHandle:
    host: str
    port: int
    url: str
    _server: _Uvicorn
    _thread: threading.Thread
    _layout: Layout
    _sock: socket.socket
    _stopped: bool = False

    def sockname(self) -> tuple:
        return self._sock.getsockname()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close open connections, and withdraw run/server.json if ours."""
        if self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():  # a request that ignored the graceful period
            self._server.force_exit = True
            self._thread.join(1.0)
        with contextlib.suppress(OSError):
            self._sock.close()
        info = read_json_obj(self._layout.run / SERVER_JSON) or {}
        if info.get("pid") == os.getpid() and info.get("port") == self.port:
            with contextlib.suppress(FileNotFoundError):
                (self._layout.run / SERVER_JSON).unlink()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.set_inheritable(False)  # workers and hooks must not hold the port open
    except OSError:
        sock.close()
        raise
    return sock


def start_server(layout: Layout, cfg: ServerConfig, heartbeat: Callable[[], float],
                 data_map: DataMapConfig | None = None) -> ServerHandle:
    """Serve HTTP for `layout` on a daemon thread; returns once the server is accepting.

    `heartbeat()` returns the time.time() of the supervisor loop's last pass. Raises
    OSError when the address cannot be bound (the caller logs it and trains on without HTTP).
    """
    layout.run.mkdir(parents=True, exist_ok=True)
    ensure_token(layout)
    reader = Reader(layout, cfg, heartbeat, loopback=is_loopback(cfg.host), data_map=data_map or DataMapConfig())
    clean_uploads(layout)
    sock = _bind(cfg.host, cfg.port)
    port = int(sock.getsockname()[1])
    if logging.getLogger("uvicorn").level == logging.NOTSET:
        logging.getLogger("uvicorn").setLevel(logging.WARNING)  # no start-up chatter in the daemon log
    config = uvicorn.Config(create_app(reader), log_config=None, access_log=False, server_header=False,
                            http="h11", ws="none", lifespan="off", loop="asyncio", backlog=BACKLOG,
                            timeout_keep_alive=KEEPALIVE_S, timeout_graceful_shutdown=GRACEFUL_S)
    server = _Uvicorn(config)
    thread = threading.Thread(target=server.run_in_thread, args=(sock,), name="trainerd-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    if not server.started:
        server.should_exit = True
        sock.close()
        raise OSError(f"the HTTP server did not start on {cfg.host}:{port} ({server.failed!r})")
    # The URL a client on this machine uses: a wildcard bind is reached through loopback.
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(cfg.host, cfg.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    atomic.write_json(layout.run / SERVER_JSON, {"url": url, "port": port, "pid": os.getpid()})
    log.info("HTTP on %s (dashboard, /metrics, /healthz, /openapi.json; token in %s)", url, layout.run / TOKEN_FILE)
    return ServerHandle(cfg.host, port, url, server, thread, layout, sock)
