"""What is in the inbox: which entries are delivered, settled, ignored, and why.

Settling is judged only by what this process has seen (size, mtime and inode unchanged
across its own looks for `settle_seconds` on the monotonic clock), never by comparing a
file's mtime with the wall clock: cp -p, rsync, tar and clock skew give files mtimes in
the future or the distant past, and a future mtime would otherwise never settle.

Layout of the drop zone: files in inbox/ and in one level of sub-folders (whose name is
kept as the job's source folder). inbox/high/, inbox/normal/ and inbox/low/ are priority
folders: their files, and files in one level of sub-folders inside them, are queued at
that priority. Anything deeper is rejected with its own reason.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainerd import atomic
from trainerd.jobs import Priority
from trainerd.names import NAME_MAX, beside, printable

NOT_DELIVERED_SUFFIXES = (".part", ".tmp")
REJECTED_MARK = ".rejected.json"
PRIORITY_FOLDERS = {p.value: p for p in Priority}
TOO_DEEP = ("a folder inside an inbox sub-folder; trainerd takes files from inbox/, from one level of "
            "sub-folders, and from one level inside inbox/high|normal|low/. Move its files up a level")


def ignored_because(name: str) -> str | None:
    """Why a name is not (yet) a delivery (Maildir rules), or None if it is one."""
    if name.endswith(REJECTED_MARK):
        return "trainerd's note about a rejected entry"
    if name.startswith("."):
        return ("the name starts with '.', which means 'still being delivered' (Maildir rule); "
                "rename it without the dot when it is complete")
    if name.endswith(NOT_DELIVERED_SUFFIXES):
        return "ends in .part or .tmp, which means 'still being written'; rename it when it is complete"
    return None


def note_path(path: Path) -> Path:
    """Where the note about an entry rejected in place goes. Fits NAME_MAX for any name,
    with room for atomic.write_json's temp name (TMP_PREFIX + name + "." + 8 characters)."""
    return beside(path, REJECTED_MARK, NAME_MAX - len(atomic.TMP_PREFIX) - 9)


@dataclass(frozen=True)
class Entry:
    path: Path
    folder: str | None  # the sub-folder it came from (kept in job.json)
    priority: Priority
    mtime: float
    too_deep: bool = False  # a folder below the levels trainerd takes files from


@dataclass
class Skipped:
    """An inbox entry that is not taken in, and why (for `status`)."""

    name: str  # relative to inbox/, printable
    why: str


OnUnreadable = Callable[[Path, OSError], None]


def scan(inbox: Path, on_unreadable: OnUnreadable, skipped: list[Skipped] | None = None) -> list[Entry]:
    """Delivered-looking entries, oldest mtime first (ties by name). Entries ignored by
    the Maildir rules are appended to `skipped` when given."""
    def listing(d: Path) -> list[os.DirEntry]:
        try:
            return list(os.scandir(d))
        except FileNotFoundError:
            return []
        except OSError as e:  # e.g. a sub-folder trainerd may not read
            on_unreadable(d, e)
            return []

    out: list[Entry] = []

    def walk(d: Path, rel: str, folder: str | None, prio: Priority, depth: int) -> None:
        for e in listing(d):
            name = f"{rel}{e.name}"
            why = ignored_because(e.name)
            if why is not None:
                if skipped is not None and not e.name.endswith(REJECTED_MARK):
                    skipped.append(Skipped(printable(name), why))
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue  # gone between listing and stat
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir and depth == 0 and e.name in PRIORITY_FOLDERS:
                walk(Path(e.path), f"{name}/", None, PRIORITY_FOLDERS[e.name], 1)
            elif is_dir and not e.name.endswith(".jsonl") and folder is None and depth < 2:
                walk(Path(e.path), f"{name}/", e.name, prio, 2)
            else:
                out.append(Entry(Path(e.path), folder, prio, st.st_mtime, too_deep=is_dir and depth == 2
                                 and not e.name.endswith(".jsonl")))

    walk(inbox, "", None, Priority.NORMAL, 0)
    out.sort(key=lambda x: (x.mtime, x.path.name))
    return out


class Settler:
    """Remembers what each entry looked like when first seen unchanged (monotonic time)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._seen: dict[str, tuple[tuple[int, int, int], float]] = {}

    def waited(self, path: Path, st: os.stat_result) -> float:
        """Seconds this entry has been seen unchanged (0.0 at the first look or after a change)."""
        key, sig, now = str(path), (st.st_size, st.st_mtime_ns, st.st_ino), self.clock()
        seen = self._seen.get(key)
        if seen is None or seen[0] != sig:
            self._seen[key] = (sig, now)
            return 0.0
        return now - seen[1]

    def peek(self, path: Path, st: os.stat_result) -> float | None:
        """Seconds seen unchanged so far, without counting this as a look (None: not seen
        as it is now)."""
        seen = self._seen.get(str(path))
        if seen is None or seen[0] != (st.st_size, st.st_mtime_ns, st.st_ino):
            return None
        return self.clock() - seen[1]

    def forget(self, path: Path) -> None:
        self._seen.pop(str(path), None)

    def keep_only(self, paths: set[str]) -> None:
        """Drop observations of entries no longer in the inbox (memory stays bounded)."""
        for k in [k for k in self._seen if k not in paths]:
            del self._seen[k]
