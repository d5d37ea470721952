"""Shared fixtures: a real tiny model (built once per session), base dirs, real processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
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
"""


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
    lines = []
    for table, values in merged.items():
        if isinstance(values, dict):
            lines.append(f"[{table}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        else:
            lines.insert(0, f"{table} = {json.dumps(values)}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def base(tmp_path, tiny_model) -> Path:
    return make_base(tmp_path / "base", tiny_model)


def wait_for(pred, timeout: float = 120, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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
