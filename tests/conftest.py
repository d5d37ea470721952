"""Shared fixtures: a real tiny model (built once per session), base dirs, real processes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def trainerd_cmd() -> list[str]:
    return [sys.executable, "-m", "trainerd.cli"]


def cli(*args: str | Path, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the real `trainerd` command in a subprocess."""
    p = subprocess.run([*trainerd_cmd(), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"trainerd {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def write_jsonl(path: Path, rows: list[dict], settle: bool = True) -> Path:
    """Deliver a file the Maildir way (write aside, rename in), already settled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".part")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if settle:  # backdate so the settle time does not slow the test down
        old = time.time() - 3600
        os.utime(tmp, (old, old))
    tmp.rename(path)
    return path


def chat_rows(n: int, tag: str = "a") -> list[dict]:
    return [{"messages": [
        {"role": "user", "content": f"Say the {tag} code number {i % 7}."},
        {"role": "assistant", "content": f"The {tag} code number is {i % 7 * 3}."},
    ]} for i in range(n)]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real tiny Qwen2 + BPE tokenizer with a chat template, built locally once."""
    from trainerd.worker.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(out, warm_steps=40)
    return out


FAST = """
[train]
learning_rate = 2e-3
warmup_steps = 2
micro_batch_size = 4
max_seq_len = 256
threads = 1
[checkpoint]
every_steps = 4
[queue]
settle_seconds = 0
backoff_seconds = [0]
poll_seconds = 0.2
[daemon]
heartbeat_seconds = 0.5
[server]
port = 0
[replay]
fraction = 0
"""
# Replay is on by default (0.25); the tests pin it off so a test counts exactly its own
# examples, and the tests of replay turn it on themselves.


def make_base(root: Path, model: Path | str, extra: str = "") -> Path:
    """A base dir with the layout and a fast config (later TOML tables override earlier)."""
    from trainerd.paths import Layout

    Layout.at(root).ensure()
    text = f'base_model = "{model}"\n' + _merge(FAST, extra)
    (root / "trainerd.toml").write_text(text)
    return root


def _merge(base: str, extra: str) -> str:
    """Overlay `extra`'s keys onto `base` table by table (TOML forbids duplicate keys)."""
    import tomllib

    merged = tomllib.loads(base)
    for table, values in tomllib.loads(extra).items():
        if isinstance(values, dict):
            merged.setdefault(table, {}).update(values)
        else:
            merged[table] = values
    lines: list[str] = []

    def emit(name: str, values: dict) -> None:
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict))
        for k, v in values.items():
            if isinstance(v, dict):  # a sub-table such as [data.map]
                emit(f"{name}.{k}", v)

    for table, values in merged.items():
        if isinstance(values, dict):
            emit(table, values)
        else:
            lines.insert(0, f"{table} = {json.dumps(values)}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def base(tmp_path, tiny_model) -> Path:
    return make_base(tmp_path / "base", tiny_model)


def poll(pred, timeout: float, interval: float = 0.1):
    """pred()'s first truthy value within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return None


def wait_for(pred, timeout: float = 120, interval: float = 0.1, what: str = "condition"):
    v = poll(pred, timeout, interval)
    if not v:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return v


def start_daemon(base: Path, *args: str, out: Path | None = None) -> subprocess.Popen:
    """`trainerd run` with its output appended to `out` (default BASE/daemon.out)."""
    with open(out or base / "daemon.out", "ab") as log:  # the child keeps its own copy of the fd
        return subprocess.Popen([*trainerd_cmd(), "run", "--base-dir", str(base), *args],
                                stdout=log, stderr=subprocess.STDOUT)


def daemon_log(base: Path) -> str:
    try:
        return (base / "daemon.out").read_text()
    except OSError:
        return ""


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextlib.contextmanager
def daemon(base: Path, *args: str):
    """A real `trainerd run` for the body of a with-block; killed if the body left it up."""
    d = start_daemon(base, *args)
    try:
        yield d
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()


class CannotMount(Exception):
    pass


@contextlib.contextmanager
def tmpfs(where: Path, size_mb: int, skip: bool = True):
    """A real size-limited filesystem at `where` for the body of a with-block. Where
    mounting is not allowed: the test is skipped (skip=True) or CannotMount is raised."""
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        why = p.stderr.strip() or f"mount exited {p.returncode}"
        if skip:
            pytest.skip(f"cannot mount a {size_mb} MB tmpfs here ({why})")
        raise CannotMount(why)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def tool(name: str, package: str) -> str:
    """An external checker (promtool, systemd-analyze): its path, or a skip that says how to
    get it. Under CI (scripts/test.sh installs them) a missing tool is a failure, not a skip."""
    import shutil

    path = shutil.which(name)
    if path is None:
        msg = f"{name} not installed (apt-get install {package}; scripts/test.sh does it as root)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path
# ------------------------------------------------------------------ publish hooks (tests/test_publish.py)
# Appends its environment and stdin to the file named by its argument: one line per run.
RECORDER = (
    "import json, os, sys\n"
    "env = {k: v for k, v in os.environ.items() if k.startswith('TRAINERD_') and k != 'TRAINERD_PARENT_PID'}\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write(json.dumps({'env': env, 'stdin': json.loads(sys.stdin.read())}) + '\\n')\n"
)


@contextlib.contextmanager
def receiver(status: int = 200) -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP server that keeps every JSON body POSTed to it."""
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(json.loads(body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/hook", got
    finally:
        srv.shutdown()
        srv.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once it is closed


def recorder(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    out = tmp_path / "calls.jsonl"
    return [sys.executable, str(script), str(out)], out


def calls(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="session")
def trained_line(tmp_path_factory, tiny_model) -> dict:
    """Two versions (v0001, v0002) trained by a real `trainerd run --once` under umask 0077,
    with [publish] hooks: a recording command and a webhook to a local receiver, plus a
    probe set. Shared by the tests that need a line of versions: training is the slow part."""
    root = tmp_path_factory.mktemp("line")
    cmd, record = recorder(root)
    with receiver() as (url, got):
        base = make_base(root / "base", tiny_model, "[publish]\ncommand = " + json.dumps(cmd)
                         + f"\nwebhook = \"{url}\"\nbackoff_seconds = [0.1]\n")
        (base / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(4, "one")))
        write_jsonl(base / "inbox" / "one.jsonl", chat_rows(16, "one"))
        write_jsonl(base / "inbox" / "two.jsonl", chat_rows(16, "two"))
        t0 = time.monotonic()
        p = subprocess.run([*trainerd_cmd(), "run", "--base-dir", str(base), "--once"], capture_output=True,
                           text=True, timeout=600, preexec_fn=lambda: os.umask(0o077))
        assert p.returncode == 0, p.stderr
        assert os.readlink(base / "models" / "current") == "v0002", p.stderr
    return {"base": base, "webhook": list(got), "calls": calls(record), "log": p.stderr,
            "seconds": time.monotonic() - t0}
