"""Asking a model from the CLI and the dashboard, without torch in this process.

`trainerd generate / chat / compare` and `POST /api/generate` / `/api/compare` all run
`python -m trainerd.worker.generate` (the worker package's code) in a child process: the
CLI and the daemon never import torch (docs/ARCHITECTURE.md), so the daemon's memory never holds a
model and a crash while generating is that child's, never the daemon's.

The dashboard's choices (docs/SERVING.md, docs/DECISIONS.md):
- one answer at a time per daemon (a second request meanwhile gets 429);
- on a GPU, never beside training: the child takes run/gpu.lock shared (trainerd.gpugate),
  so while a job trains the request is refused with 409 and the reason, and a job claimed
  while an answer is being generated waits for it (bounded by GENERATE_TIMEOUT_S);
- on a CPU-only machine it runs beside training at nice 10: there is no GPU memory to
  share, and training's host-memory ceiling counts the worker's own memory only;
- versions are named (current, base, vNNNN), never a path from the request.

This module only builds the child's command line and reads its answer: it imports nothing
from trainerd.worker, so a wrong version is the child's to refuse (it checks the versions
before it imports torch; exit 2 with the sentence, as before).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from typing import Any

from trainerd.gpugate import BUSY_EXIT
from trainerd.jobs import child_env
from trainerd.paths import Layout

MODULE = "trainerd.worker.generate"
WEB_VERSION_RE = re.compile(r"current|base|v[0-9]{4}")
PROMPT_MAX_CHARS = 4_000  # the body limit (server.CONTROL_BODY_MAX) holds it in any encoding
MAX_NEW_TOKENS_WEB = 512
GENERATE_TIMEOUT_S = 300.0  # a dashboard answer (model load included)
COMPARE_TIMEOUT_S = 900.0


def command(layout: Layout, sub: str, args: list[str], *, device: str = "auto",
            max_new_tokens: int | None = None, temperature: float | None = None) -> list[str]:
    cmd = [sys.executable, "-m", MODULE, "--base-dir", str(layout.base), "--device", device]
    if max_new_tokens is not None:
        cmd += ["--max-new-tokens", str(max_new_tokens)]
    if temperature is not None:
        cmd += ["--temperature", str(temperature)]
    return [*cmd, sub, *args]


def run_attached(cmd: list[str]) -> int:
    """The child with this terminal's stdin/stdout/stderr (streaming, pipes, the REPL)."""
    try:
        return subprocess.call(cmd, env=child_env())
    except KeyboardInterrupt:
        return 130


def run_captured(cmd: list[str], stdin: str, timeout: float) -> tuple[int, str, str]:
    """(exit status, stdout, stderr); 124 when it ran past `timeout` (it is killed)."""
    try:
        p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout,
                           env=child_env(), start_new_session=True)
    except subprocess.TimeoutExpired:
        return 124, "", f"no answer within {timeout:.0f}s; the generation was stopped"
    return p.returncode, p.stdout, p.stderr


def last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln.removeprefix("error:").strip()
    return lines[-1] if lines else "the generation process ended with no output"


# ------------------------------------------------------------------ the dashboard's side
_one_at_a_time = threading.Semaphore(1)


def _web_version(body: dict[str, Any], key: str, default: str = "current") -> str:
    v = body.get(key, default)
    if not isinstance(v, str) or not WEB_VERSION_RE.fullmatch(v):
        raise ValueError(f"{key} must be 'current', 'base' or a version name such as v0003")
    return v


def _answer(rc: int, out: str, err: str) -> tuple[int, dict[str, Any]]:
    if rc == 0:
        return 200, {}
    code = {BUSY_EXIT: 409, 2: 400, 124: 504}.get(rc, 500)
    return code, {"error": last_error(err), "exit": rc}


def web_generate(layout: Layout, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST /api/generate {"prompt": ..., "version": "current", "max_new_tokens": 128}."""
    prompt = body.get("prompt")
    try:
        version = _web_version(body, "version")
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > PROMPT_MAX_CHARS:
            raise ValueError(f"prompt must be a non-empty string of at most {PROMPT_MAX_CHARS} characters")
        n = body.get("max_new_tokens", 128)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_NEW_TOKENS_WEB:
            raise ValueError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS_WEB}")
    except ValueError as e:
        return 400, {"error": str(e)}
    if not _one_at_a_time.acquire(blocking=False):
        return 429, {"error": "another answer is being generated; try again when it is done"}
    try:
        cmd = command(layout, "generate", ["--version", version, "--json", "--file", "-"], max_new_tokens=n)
        rc, out, err = run_captured(cmd, json.dumps(prompt) + "\n", GENERATE_TIMEOUT_S)
    finally:
        _one_at_a_time.release()
    code, answer = _answer(rc, out, err)
    if code == 200:
        rows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        answer = rows[-1] if rows else {"answer": ""}
    return code, answer


def web_compare(layout: Layout, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST /api/compare {"a": "v0001", "b": "current"}: the `trainerd compare` result."""
    try:
        a, b = _web_version(body, "a"), _web_version(body, "b")
    except ValueError as e:
        return 400, {"error": str(e)}
    if not _one_at_a_time.acquire(blocking=False):
        return 429, {"error": "another answer or comparison is running; try again when it is done"}
    try:
        rc, out, err = run_captured(command(layout, "compare", [a, b], max_new_tokens=64), "", COMPARE_TIMEOUT_S)
    finally:
        _one_at_a_time.release()
    code, answer = _answer(rc, out, err)
    if code == 200:
        answer = json.loads(out.strip().splitlines()[-1])
    return code, answer


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def print_compare(console: Any, r: dict[str, Any]) -> None:
    """`trainerd compare` for a person: answers side by side, then the probe losses."""
    from rich.markup import escape
    from rich.table import Table

    a, b = r["a"], r["b"]
    if r["answers"]:
        t = Table(title=f"answers: {a} vs {b}", title_justify="left", show_lines=True)
        for col in ("prompt", "expected", a, b):
            t.add_column(col, overflow="fold")
        for x in r["answers"]:
            t.add_row(escape(x["prompt"]), escape(x["expected"] or "-"), escape(x["a"]), escape(x["b"]))
        console.print(t)
    p = r.get("probe")
    if not p:
        console.print("no probe set, so no losses compared (give --probe FILE, or put one at [eval] probe_file)")
        return
    t = Table(title=f"probe loss per example ({p['file']})", title_justify="left")
    for col in ("line", a, b, "change"):
        t.add_column(col)
    for row in p["rows"]:
        delta = "" if row["delta"] is None else f" ({row['delta']:+.4f})"
        t.add_row(str(row["line"]), _fmt(row["a"]), _fmt(row["b"]), row["change"] + delta)
    console.print(t)
    tot = p["total"]
    console.print(f"total (token-weighted): {a} {_fmt(tot['a'])} -> {b} {_fmt(tot['b'])}; "
                  f"{len(p['better'])} better, {len(p['worse'])} worse, "
                  f"{p['examples'] - len(p['better']) - len(p['worse'])} within {r['rtol']:.1%}")
    for what in ("better", "worse"):
        if p[what]:
            console.print(f"{what} in {b}: lines {', '.join(map(str, p[what]))}")
