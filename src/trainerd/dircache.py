"""Folder listings that cost a stat while the folder has not changed.

The HTTP server answers /api/status every 2 s per open dashboard; after months, jobs/done/
holds 10,000 entries, and listing it each time is most of the answer's cost. A directory's
mtime changes whenever an entry is added, removed or renamed in or out (a job changing
state is exactly that), so (inode, mtime_ns) says whether a cached listing still holds.
Only names are cached, never contents: a job.json is still read fresh when it is read.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

MAX_DIRS = 64  # the state folders of a few base dirs

_lock = threading.Lock()
_cache: OrderedDict[str, tuple[tuple[int, int], frozenset[str]]] = OrderedDict()


def entries(path: os.PathLike | str) -> frozenset[str]:
    """Names in `path` not starting with '.' (staging and temp names); FileNotFoundError
    when it does not exist, like os.listdir."""
    key = os.fspath(path)
    st = os.stat(key)
    stamp = (st.st_ino, st.st_mtime_ns)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] == stamp:
            _cache.move_to_end(key)
            return hit[1]
    names = frozenset(n for n in os.listdir(key) if not n.startswith("."))
    # Listed after the stat: a change during the listing moves the mtime past `stamp`, so
    # the next call lists again rather than trusting a listing older than the folder.
    with _lock:
        _cache[key] = (stamp, names)
        _cache.move_to_end(key)
        while len(_cache) > MAX_DIRS:
            _cache.popitem(last=False)
    return names


def count(path: Path | str) -> int:
    return len(entries(path))
