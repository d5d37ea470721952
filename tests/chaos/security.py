"""Security sweep against a live daemon (default [server] host; port 0): where it listens,
what a request without the token can do, a 2 GB upload announced by its header, `..` and
absolute paths in every name the HTTP API and the CLI accept, and symlinks in the inbox.
Every probe is counted; a probe that gets through is a violation.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from tests.chaos import invariants
from tests.chaos.harness import (
    Log,
    Tally,
    kill_tree,
    quiet,
    rng_for,
    start_daemon,
    stop_daemon,
    wait_for,
)
from tests.conftest import chat_rows, cli, make_base
from trainerd import atomic
from trainerd.config import ServerConfig
from trainerd.paths import Layout

TWO_GB = 2 * 1024**3
CONTROL = ("pause", "resume", "stop", "skip")


def http(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def raw(port: int, request: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send bytes as they are (no client-side normalisation); the answer and its delay."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pass
    return answer, time.monotonic() - t0


def traversal_names(rng, n: int) -> list[str]:
    """Fixed classics plus random compositions of traversal pieces."""
    fixed = ["../x.jsonl", "../../etc/passwd", "/etc/passwd", "/tmp/x.jsonl", "a/../../x.jsonl",
             "..", ".", "..%2fx.jsonl", "%2e%2e/x.jsonl", "..\\x.jsonl", "x.jsonl/..", "//x.jsonl",
             "/", "....//x.jsonl", "./../x.jsonl"]
    pieces = ["..", "/", "%2e%2e", "%2f", "\\", ".", "etc", "x.jsonl", "~", "%00"]
    made = ["".join(rng.choice(pieces) for _ in range(rng.randint(2, 6))) for _ in range(n)]
    return fixed + [m for m in made if ".." in m or m.startswith("/")]


class Sweep:
    def __init__(self, base: Path, url: str, port: int, tally: Tally):
        self.base, self.url, self.port, self.tally = base, url, port, tally
        self.layout = Layout.at(base)
        self.token = (self.layout.run / "token").read_text().strip()

    def expect(self, what: str, ok: bool, detail: str = "") -> None:
        self.tally.bump("probes")
        if not ok:
            self.tally.fail(what, [detail or "got through"])

    def listening(self, pid: int) -> None:
        self.expect("default host is loopback", ServerConfig().host == "127.0.0.1")
        addrs = [c.laddr for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
        self.expect("listens on loopback only", bool(addrs) and all(a.ip == "127.0.0.1" for a in addrs), str(addrs))

    def tokens(self) -> None:
        for action in CONTROL:
            for hdr in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {self.token}"},
                        {"Authorization": "Bearer "}, {"Authorization": f"Bearer {self.token[:-1]}"}):
                code = http(f"{self.url}api/control/{action}", "POST", b"{}", hdr)
                self.expect(f"{action} with {list(hdr.values())[:1]}", code == 401, f"HTTP {code}")
        code = http(f"{self.url}api/queue?name=a.jsonl", "POST", b'{"text": "x"}\n')
        self.expect("upload without token", code == 401, f"HTTP {code}")
        self.expect("the wish did not change", _wish(self.layout) == "running", _wish(self.layout))
        # The probes can fail: the right token is obeyed.
        code = http(f"{self.url}api/control/pause", "POST", b"{}", self._auth())
        self.expect("the right token is obeyed", code == 200 and _wish(self.layout) == "paused")
        http(f"{self.url}api/control/resume", "POST", b"{}", self._auth())

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def big_upload(self) -> None:
        for auth in (True, False):
            head = (f"POST /api/queue?name=big.jsonl HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {TWO_GB}\r\n"
                    + (f"Authorization: Bearer {self.token}\r\n" if auth else "") + "\r\n").encode()
            answer, secs = raw(self.port, head + b'{"text": "the other 2 GB never come"}\n')
            want = b"HTTP/1.1 413" if auth else b"HTTP/1.1 401"
            self.expect(f"2 GB upload (token: {auth})", answer.startswith(want), answer[:80].decode(errors="replace"))
            self.tally.sample("two_gb_refusal_s", secs)
        self.expect("no upload temp file kept", not any((self.layout.run / "uploads").glob("*")))

    def names(self, names: list[str]) -> None:
        before = _tree(self.base.parent)
        for name in names:
            q = urllib.request.quote(name, safe="")
            code = http(f"{self.url}api/queue?name={q}", "POST", b'{"text": "x"}\n', self._auth())
            self.expect(f"upload name {name!r}", code == 400, f"HTTP {code}")
            for path in (f"/api/jobs/{name}", f"/api/metrics/{name}", f"/api/jobs/{q}", f"/static/{name}"):
                answer, _ = raw(self.port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                self.expect(f"GET {path!r}", not answer.startswith(b"HTTP/1.1 200"), answer[:60].decode(errors="replace"))
            for args in (("queue", "show", name), ("queue", "remove", name), ("queue", "requeue", name),
                         ("queue", "move", name, "-p", "high"), ("models", "show", name),
                         ("models", "rollback", name), ("models", "export", name, str(self.base.parent / "exp"))):
                code, text = cli_in_process(*args, "--base-dir", str(self.base))
                self.expect(f"trainerd {' '.join(args[:2])} {name!r}", code not in (0, None), f"exit {code}: {text}")
        self.expect("nothing outside the base dir changed", _tree(self.base.parent) == before,
                    str(set(_tree(self.base.parent)) ^ set(before)))

    def symlinks(self, outside: Path) -> None:
        target = outside / "secret.jsonl"
        target.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(3, "secret")))
        (outside / "dir").mkdir()
        (outside / "dir" / "inner.jsonl").write_text(target.read_text())
        stat0 = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (target, outside / "dir" / "inner.jsonl")}
        inbox = self.layout.inbox
        (inbox / "sub").mkdir()
        links = {"link.jsonl": target, "linkdir": outside / "dir", "passwd.jsonl": Path("/etc/passwd")}
        for name, to in links.items():
            os.symlink(to, inbox / name)
        os.symlink(target, inbox / "sub" / "nested.jsonl")
        names = [*links, "nested.jsonl"]
        wait_for(lambda: len(_rejections(self.layout)) >= len(names), timeout=60, what="symlinks rejected")
        got = _rejections(self.layout)
        for name in names:
            reason = got.get(name, "")
            self.expect(f"symlink {name} rejected as a link", "symlink" in reason or "link" in reason, reason)
        for p, (mtime, data) in stat0.items():
            self.expect(f"{p.name} untouched", p.exists() and p.stat().st_mtime_ns == mtime and p.read_bytes() == data)
        self.expect("nothing was trained from a link", not any(self.layout.queued("normal").iterdir())
                    and not any(self.layout.done.iterdir()) and not any(self.layout.active.iterdir()))


def cli_in_process(*args: str) -> tuple[int | None, str]:
    """The real Typer app, in this process: hundreds of probes without hundreds of
    interpreter start-ups. An uncaught exception (a traceback) is exit None."""
    from typer.testing import CliRunner

    from trainerd.cli import app

    r = CliRunner().invoke(app, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        return None, f"{type(r.exception).__name__}: {r.exception}"
    return r.exit_code, r.output[-200:]


def _wish(layout: Layout) -> str:
    try:
        return atomic.read_json(layout.control / "state.json").get("state", "running")
    except (OSError, ValueError):
        return "running"


def _rejections(layout: Layout) -> dict[str, str]:
    out = {}
    for job in layout.failed.iterdir():
        try:
            out[atomic.read_json(job / "job.json")["original_name"]] = atomic.read_json(job / "error.json")["reason"]
        except (OSError, ValueError, KeyError):
            pass
    return out


def _tree(root: Path) -> list[str]:
    """Every path under `root` except the base dir's busy parts (logs, state, run)."""
    skip = ("/base/logs", "/base/run", "/base/state.db", "/base/daemon.out")
    return sorted(str(p) for p in root.rglob("*") if not any(s in str(p) for s in skip))


def campaign(model: Path, root: Path, *, random_names: int = 30, seed: int | None = None,
             log: Log = quiet) -> Tally:
    rng, seed = rng_for(seed, log)
    tally = Tally()
    tally.counts["seed"] = seed
    # No job is trained; the model is only checked at start (a daemon refuses a missing one).
    base = make_base(root / "base", model, "[server]\nport = 0\n[queue]\nsettle_seconds = 0\n")
    layout = Layout.at(base)
    (root / "outside").mkdir()
    d = start_daemon(base)
    try:
        info = wait_for(lambda: (lambda i: i if i.get("pid") == d.pid else None)(
            _json(layout.run / "server.json")), timeout=60, what="run/server.json")
        sweep = Sweep(base, info["url"], info["port"], tally)
        sweep.listening(d.pid)
        sweep.tokens()
        sweep.big_upload()
        sweep.names(traversal_names(rng, random_names))
        cli("pause", "--base-dir", base)  # the symlinks are judged at intake; nothing must train
        sweep.symlinks(root / "outside")
        tally.counts["daemon_up"] = int(d.poll() is None)
        rc = stop_daemon(d, base)
        if rc != 0:
            tally.fail("stop", [f"daemon exit {rc}"])
    finally:
        kill_tree(d)
    exp = invariants.Expected()
    tally.fail("invariants", [p for p in invariants.check(base, exp) if "unexpected failed" not in p])
    log(f"security: {tally.summary()}")
    return tally


def _json(path: Path) -> dict:
    try:
        return atomic.read_json(path)
    except (OSError, ValueError):
        return {}
