"""Times and sizes as people read them, for every face (the CLI's tables, `watch`): one
definition, so "3m ago" means the same on both."""

from __future__ import annotations

import time


def ago(t: float | None) -> str:
    """`t` (a Unix time) as "3m ago"; "-" when unknown."""
    if not t:
        return "-"
    s = max(0.0, time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def human_bytes(n: int) -> str:
    for unit, k in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"
