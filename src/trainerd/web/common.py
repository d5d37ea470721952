"""Small value helpers the web modules share (one owner: reads, metrics and series use these)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from trainerd import atomic


def num(x: Any) -> float | None:
    """A finite float, or None for anything else (absent, text, NaN, inf)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_json_obj(path: os.PathLike | Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing, unreadable or not an object: the web
    side reads files other processes replace at any time, and a bad one is "unknown"."""
    try:
        d = atomic.read_json(Path(path))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def jsonable(x: Any) -> Any:
    """NaN/inf are not JSON (browsers reject them): report them as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def stat_key(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size): changes whenever a file is replaced or written."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class HttpError(Exception):
    """An answer other than 200, raised from anywhere in a request; `extra` joins the body
    ({"error": message, **extra})."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.code, self.message, self.headers, self.extra = code, message, headers or {}, extra
