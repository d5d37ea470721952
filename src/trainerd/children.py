"""A command that needs the training stack runs the worker's code in a child process; this
is the one format the two sides speak (the CLI process never imports torch).

The child writes JSON lines on its stdout: `{"progress": [done, total]}` any number of
times, then `{"result": {...}}` and exit 0, or `{"error": "<sentence>"}` and a non-zero
exit status. Its stderr belongs to the person (library warnings, a traceback) and passes
through untouched. The parent's side, `run`, returns the result or raises ChildFailed
with the child's own sentence and exit status, so the user reads what an in-process call
would have said.

Used by `trainerd init --tiny-model` (trainerd.bootstrap starts trainerd.worker.tiny) and
`trainerd models export --merged` (trainerd.line.export starts `trainerd.worker.consolidate
--export`). `generate`/`chat`/`compare` (trainerd.ask) and
`validate -b` (trainerd.worker.tokenize --check) talk to their children in formats of
their own: streamed text, and one verdict per file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from trainerd.jobs import child_env

PROGRESS, RESULT, ERROR = "progress", "result", "error"


class ChildFailed(Exception):
    """The child said why (its sentence) or died (the exit status and where to look)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _record(line: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and rec.keys() & {PROGRESS, RESULT, ERROR} else None


def run(cmd: list[str], what: str,
        on_progress: Callable[[int, int], Any] | None = None) -> dict[str, Any]:
    """Run `cmd` (a `python -m trainerd.worker.X ...` line) to its end; `what` names the
    task in the sentence said when the child dies without one of its own."""
    result: dict[str, Any] | None = None
    error: str | None = None
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                          env=child_env()) as p:
        assert p.stdout is not None
        for line in p.stdout:
            rec = _record(line)
            if rec is None:  # not ours (Channel keeps stray prints off this pipe): the person's
                sys.stderr.write(line)
            elif PROGRESS in rec:
                if on_progress is not None:
                    on_progress(*rec[PROGRESS])
            elif RESULT in rec:
                result = rec[RESULT]
            else:
                error = str(rec[ERROR])
        rc = p.wait()
    if rc == 0 and result is not None:
        return result
    if error is None:
        error = (f"{what} failed: its process exited with status {rc} without saying why; "
                 "the lines above (its stderr) show what happened")
    raise ChildFailed(error, rc or 1)


class Channel:
    """The child's end. Records go to the stdout this process was started with; from here
    on anything else printed to stdout (a library's print) goes to stderr, so it can never
    garble a record."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)

    def _say(self, **record: Any) -> None:
        self._out.write(json.dumps(record, default=str) + "\n")
        self._out.flush()

    def progress(self, done: int, total: int) -> None:
        self._say(progress=[done, total])

    def result(self, value: dict[str, Any]) -> None:
        self._say(result=value)

    def error(self, message: str) -> None:
        self._say(error=message)
