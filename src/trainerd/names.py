"""File names as they are shown, and the names trainerd derives from them.

Any name a filesystem allows can arrive in the inbox: newlines, escape sequences, 255
bytes. Printed raw, a newline forges a log line or a `queue list` row (log injection),
and a name derived by appending a suffix may exceed the filesystem's limit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

NAME_MAX = 255  # bytes per path component on ext4, xfs, btrfs, tmpfs


def printable(name: str) -> str:
    """`name` with every control or non-printable character escaped (\\n, \\x1b, \\udcff
    for undecodable bytes), so one name is always one line and cannot drive a terminal.
    A printable name is returned unchanged."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in name)


def beside(path: Path, suffix: str, limit: int = NAME_MAX) -> Path:
    """`path` + `suffix` in the same folder; when that would exceed `limit` bytes, a
    shortened name ending in a hash of the full one (still unique per entry, still ending
    in suffix)."""
    name = path.name + suffix
    if len(os.fsencode(name)) <= limit:
        return path.with_name(name)
    digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
    keep = limit - len(os.fsencode(suffix)) - len(digest) - 1
    head = os.fsdecode(os.fsencode(path.name)[:keep])  # surrogateescape: a cut character round-trips
    return path.with_name(f"{head}-{digest}{suffix}")
