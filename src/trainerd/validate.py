"""A file's verdict, as the daemon gives it: one pass, bounded memory, every problem with
its line (or array element) and the same problems grouped.

No torch here: the supervisor checks each file at intake with `check_stream`, and
`trainerd validate` calls the same function. What an example is belongs to
trainerd.formats; token lengths need the model's tokenizer, so the tokenizing stage
(trainerd.worker.tokenize, a child process) adds them — `trainerd validate -b BASE` runs
that same child, so its verdict is the daemon's.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainerd.config import DataMapConfig
from trainerd.formats import NO_MAP, FileKindError, FormatError, decode, iter_records, parse

MAX_ERRORS = 20
TRAINED_SUFFIXES = (".jsonl", ".json")  # what intake, `queue add` and validate accept


@dataclass
class LineError:
    line: int
    reason: str
    last: int | None = None  # the same reason on every record from line to last
    unit: str = "line"

    def __str__(self) -> str:
        where = f"{self.unit} {self.line}" if self.last in (None, self.line) else f"{self.unit}s {self.line}–{self.last}"
        return f"{where}: {self.reason}"


@dataclass
class Report:
    path: str
    examples: int = 0
    lines: int = 0
    unit: str = "line"
    formats: Counter = field(default_factory=Counter)
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0  # all bad records; `errors` keeps the first MAX_ERRORS groups
    file_error: str | None = None
    not_checked: list[str] = field(default_factory=list)  # checks this run could not do
    tokens: dict[str, Any] | None = None  # the tokenizing stage's report, when it ran
    _last_seen: int = 0  # the last record that was an error, or good (blank lines aside)

    @property
    def ok(self) -> bool:
        return self.file_error is None and self.error_count == 0 and self.examples > 0

    def add(self, line: int, reason: str) -> None:
        self.error_count += 1
        last = self.errors[-1] if self.errors else None
        # Extend the last group when this record follows it with nothing else between.
        if last is not None and last.reason == reason and self._last_seen == (last.last or last.line):
            last.last = line
        elif len(self.errors) < MAX_ERRORS:
            self.errors.append(LineError(line, reason, unit=self.unit))
        self._last_seen = line

    def reason(self) -> str:
        """One paragraph a person can act on."""
        if self.file_error:
            return self.file_error
        if self.error_count:
            shown = sum((e.last or e.line) - e.line + 1 for e in self.errors)
            more = f" (and {self.error_count - shown} more)" if self.error_count > shown else ""
            listed = "; ".join(str(e) for e in self.errors)
            return (f"{self.error_count} bad {self.unit}(s){more}: {listed}. "
                    f"Fix or remove these {self.unit}s and deliver the file again.")
        if self.examples == 0:
            return "the file has no examples (empty, or only blank lines)"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "examples": self.examples,
            "lines": self.lines,
            "unit": self.unit,
            "formats": dict(self.formats),
            "error_count": self.error_count,
            "errors": [{"line": e.line, "last": e.last or e.line, "reason": e.reason} for e in self.errors],
            "reason": None if self.ok else self.reason(),
            "not_checked": self.not_checked,
            "tokens": self.tokens,
        }


def example_format(obj: Any, data_map: DataMapConfig = NO_MAP) -> tuple[str | None, str | None]:
    """(format, None) for a trainable example, or (None, reason)."""
    try:
        return parse(obj, data_map).format, None
    except FormatError as e:
        return None, str(e)


def check_stream(f: Any, path: str = "<stream>", data_map: DataMapConfig = NO_MAP, name: str = "") -> Report:
    """The structural verdict on a binary stream (a file's name decides .json/.jsonl)."""
    report = Report(path=path)
    if name and name_error(name):
        report.file_error = name_error(name)
        return report
    try:
        for rec in iter_records(f, name or path):
            report.lines, report.unit = rec.number, rec.unit
            if rec.raw is not None and not rec.raw.strip():
                continue  # blank lines are allowed and are not examples
            try:
                ex = parse(decode(rec), data_map)
            except FormatError as e:
                report.add(rec.number, str(e))
                continue
            report.examples += 1
            report.formats[ex.format] += 1
            report._last_seen = rec.number
    except FileKindError as e:
        report.file_error = f"not a file trainerd reads: {e}"
    return report


def name_error(name: str) -> str | None:
    """Why a file of this name is not trained, or None."""
    if name.endswith(TRAINED_SUFFIXES):
        return None
    return ("only .jsonl files (one JSON example per line) and .json files (a JSON array of examples, "
            "or JSONL) are trained; rename it if it is one of those")


def check_file(path: Path, data_map: DataMapConfig = NO_MAP) -> Report:
    """check_stream of a file on disk: a FIFO or device is refused before it is read (a
    read would block), as intake refuses it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return Report(path=str(path), file_error=f"cannot read the file: {e.strerror or e}")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Report(path=str(path), file_error="not a regular file (FIFO, socket or device); "
                          "trainerd reads only files")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return check_stream(f, str(path), data_map, path.name)
    finally:
        os.close(fd)

