"""Streaming JSONL checks: one pass, constant memory, every problem with its line number.

No torch here: the supervisor validates at ingest and the CLI offers `trainerd validate`.
Token-length checks need the model's tokenizer and chat template, so they happen in the
worker (it applies the `overlength` policy) — a file that passes here can still be a data
error there, with the line numbers of the offending examples.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
MAX_ERRORS = 20
MAX_LINE_BYTES = 64 * 1024 * 1024  # one example this big is a mistake, not data
BOM = b"\xef\xbb\xbf"


@dataclass
class LineError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class Report:
    path: str
    examples: int = 0
    lines: int = 0
    formats: Counter = field(default_factory=Counter)
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0  # all of them; `errors` keeps the first MAX_ERRORS
    file_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.file_error is None and self.error_count == 0 and self.examples > 0

    def add(self, line: int, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(LineError(line, reason))

    def reason(self) -> str:
        """One paragraph a person can act on."""
        if self.file_error:
            return self.file_error
        if self.error_count:
            more = f" (and {self.error_count - len(self.errors)} more)" if self.error_count > len(self.errors) else ""
            listed = "; ".join(str(e) for e in self.errors)
            return f"{self.error_count} bad line(s){more}: {listed}. Fix or remove these lines and drop the file again."
        if self.examples == 0:
            return "the file has no examples (empty, or only blank lines)"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "examples": self.examples,
            "lines": self.lines,
            "formats": dict(self.formats),
            "error_count": self.error_count,
            "errors": [{"line": e.line, "reason": e.reason} for e in self.errors],
            "reason": None if self.ok else self.reason(),
        }


def example_format(obj: Any) -> tuple[str | None, str | None]:
    """(format, None) for a trainable example, or (None, reason)."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, found {type(obj).__name__}"
    if "messages" in obj:
        return _check_messages(obj["messages"])
    if "prompt" in obj or "completion" in obj:
        for key in ("prompt", "completion"):
            if key not in obj:
                return None, f"'prompt' and 'completion' go together; '{key}' is missing"
            if not isinstance(obj[key], str):
                return None, f"'{key}' must be a string, found {type(obj[key]).__name__}"
        if not obj["completion"].strip():
            return None, "'completion' is empty: there would be nothing to train"
        return "prompt_completion", None
    if "text" in obj:
        if not isinstance(obj["text"], str):
            return None, f"'text' must be a string, found {type(obj['text']).__name__}"
        if not obj["text"].strip():
            return None, "'text' is empty"
        return "text", None
    keys = ", ".join(sorted(map(str, obj))[:5]) or "none"
    return None, f"unknown format (keys: {keys}); expected 'messages', 'prompt'+'completion', or 'text'"


def _check_messages(msgs: Any) -> tuple[str | None, str | None]:
    if not isinstance(msgs, list) or not msgs:
        return None, "'messages' must be a non-empty list"
    has_assistant = False
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return None, f"messages[{i}] must be an object with 'role' and 'content'"
        role = m.get("role")
        if role not in ROLES:
            return None, f"messages[{i}].role is {role!r}; allowed: {', '.join(ROLES)}"
        content = m.get("content")
        if not isinstance(content, str):
            return None, f"messages[{i}].content must be a string, found {type(content).__name__}"
        if role == "assistant":
            if not content.strip():
                return None, f"messages[{i}] is an assistant turn with empty content"
            has_assistant = True
    if not has_assistant:
        return None, "no assistant turn: there would be nothing to train"
    return "messages", None


def iter_lines(f: Any) -> Any:
    """Yield (line_number, raw_bytes) without the line ending; strips a leading BOM.

    Reads at most MAX_LINE_BYTES of a line: a longer one (e.g. a whole JSON array saved
    as .jsonl) yields None and is skipped in 1 MB chunks, so memory stays bounded."""
    n = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_LINE_BYTES:
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
            yield n, None
            continue
        if n == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        yield n, raw.rstrip(b"\r\n")


def validate_stream(f, path: str = "<stream>") -> Report:
    report = Report(path=path)
    for n, raw in iter_lines(f):
        report.lines = n
        if raw is None:
            report.add(n, f"line is longer than {MAX_LINE_BYTES >> 20} MB; one example per line, please")
            continue
        if not raw.strip():
            continue  # blank lines are allowed and are not examples
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            report.add(n, f"invalid UTF-8 at byte {e.start}")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            report.add(n, f"invalid JSON: {e.msg} at column {e.colno}")
            continue
        except RecursionError:
            report.add(n, "invalid JSON: nested too deeply")
            continue
        fmt, reason = example_format(obj)
        if fmt is None:
            report.add(n, reason or "invalid example")
        else:
            report.examples += 1
            report.formats[fmt] += 1
    return report


def validate_file(path: Path) -> Report:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return validate_stream(f, str(path))
    except OSError as e:
        return Report(path=str(path), file_error=f"cannot read the file: {e.strerror or e}")
