"""powerfs: a FUSE filesystem with a volatile cache, for power-cut tests (issue 20).

    python -m tests.chaos.powerfs.fs MOUNT STATE [--import TREE]

Serves MOUNT from STATE/store-*/ (one file per node) and keeps the durable state of
tests/chaos/powerfs/model.py beside it. Single-threaded (`-s`): every request is one
step, so a cut falls between two of them. Control: write one JSON command to
MOUNT/.powerfs (not listed):

    {"cmd": "sync"}                                    everything durable now
    {"cmd": "cut", "mode": "all|prefix|subset", "seed": 1, "tag": "why"}
    {"cmd": "crash", "mode": ..., "seed": ..., "to": DIR}  what a cut would leave, into DIR
    {"cmd": "arm", "ops": ["rename", ...], "path": REGEX, "after": N, "mode": ..., "seed": ..., "tag": ...}
    {"cmd": "disarm"}
    {"cmd": "stats"}                                   writes STATE/stats.json

`arm` cuts on its own: N requests after the first request of a kind in `ops` whose path
(either path, for a rename) matches REGEX (0: before that request runs). A cut writes
what is durable (per the mode) to STATE/crash/, then STATE/cut.json, and from then on
answers every request with EIO, as a disk without power would; the harness kills the
processes, unmounts, and mounts STATE/crash/ afresh.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import random
import re
import stat
import sys
import time
from pathlib import Path
from typing import Any

import mfusepy as fuse

from tests.chaos.powerfs.model import ROOT, FsError, Model, materialize

CTL = "/.powerfs"
CTL_FH = 1  # file handles of real files start above it

log = logging.getLogger("powerfs")


def _now() -> int:
    return time.time_ns()


class PowerFS(fuse.Operations):
    use_ns = True

    def __init__(self, state: Path, tree: Path | None):
        self.state = state
        gen = len(list(state.glob("store-*")))
        self.model = Model(state / f"store-{gen}")
        if tree is not None:
            self.model.import_tree(tree)
        else:
            self.model.store.mkdir(parents=True)
            self.model.nodes[self.model.new_id()] = _root()
            self.model.sync_all()
        self.files: dict[int, tuple[int, int]] = {}  # fh -> (node, fd)
        self.dirs: dict[int, int] = {}  # fh -> node
        self.opened: dict[int, int] = {}  # node -> open handles
        self._fh = CTL_FH
        self.dead = False
        self.armed: dict[str, Any] | None = None
        self.countdown: int | None = None
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------ the cut
    def _step(self, op: str, *paths: str | None) -> None:
        """Every request passes here first: a dead disk answers EIO; an armed trigger
        counts down and may cut before this request runs."""
        if self.dead:
            raise FsError(errno.EIO, "powered off")
        self.counts[op] = self.counts.get(op, 0) + 1
        a = self.armed
        if a is None:
            return
        if self.countdown is None and op in a["ops"] and any(p and a["re"].search(p) for p in paths):
            self.countdown = int(a.get("after", 0))
            a["hit"] = {"op": op, "paths": [p for p in paths if p]}
        if self.countdown is not None:
            if self.countdown <= 0:
                self.cut(a.get("mode", "all"), a.get("seed", 0), a.get("tag", "armed"), a["hit"])
                raise FsError(errno.EIO, "powered off")
            self.countdown -= 1

    def cut(self, mode: str, seed: int, tag: str, hit: dict[str, Any] | None = None) -> None:
        t0 = time.monotonic()
        crash = self.model.crash_state(mode, random.Random(seed))
        entries = materialize(crash, self.state / "crash")
        self.dead = True
        info = {"mode": mode, "seed": seed, "tag": tag, "hit": hit, "entries": entries,
                "pending_ops": len(self.model.pending), "dirty_files": len(self.model.data_log),
                "seconds": round(time.monotonic() - t0, 3), "counts": self.counts}
        _write_json(self.state / "cut.json", info)
        log.info("cut (%s, %s): %s", mode, tag, info)

    def _control(self, data: bytes) -> None:
        cmd = json.loads(data)
        what = cmd.get("cmd")
        if what == "sync":
            self.model.sync_all()
        elif what == "cut":
            self.cut(cmd.get("mode", "all"), cmd.get("seed", 0), cmd.get("tag", "explicit"))
        elif what == "crash":  # what a cut would leave, written to `to`; the disk stays up
            materialize(self.model.crash_state(cmd.get("mode", "all"), random.Random(cmd.get("seed", 0))),
                        Path(cmd["to"]))
        elif what == "arm":
            self.armed = dict(cmd, re=re.compile(cmd.get("path", "")))
            self.countdown = None
        elif what == "disarm":
            self.armed, self.countdown = None, None
        elif what == "stats":
            _write_json(self.state / "stats.json", {"counts": self.counts, "pending_ops": len(self.model.pending),
                                                    "dirty_files": len(self.model.data_log)})
        else:
            raise FsError(errno.EINVAL, f"unknown command {what!r}")

    # ------------------------------------------------------------ helpers
    def _node(self, path: str | None, fh: int | None = None) -> int:
        if fh is not None and fh in self.files:
            return self.files[fh][0]
        if path is None:
            raise FsError(errno.EBADF)
        return self.model.lookup(path)

    def _open_fd(self, n: int) -> int:
        self._fh += 1
        self.files[self._fh] = (n, os.open(self.model.path_of(n), os.O_RDWR))
        self.opened[n] = self.opened.get(n, 0) + 1
        return self._fh

    def _free(self, n: int | None) -> None:
        """A node with no name and no open handle: its live bytes can go."""
        if n is None:
            return
        node = self.model.nodes.get(n)
        if node is not None and node.parent is None and not self.opened.get(n) and node.kind == "f":
            try:
                os.unlink(self.model.path_of(n))
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------ attributes
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        if path == CTL:
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": 0}
        self._step("getattr")
        n = self._node(path, fh)
        node = self.model.nodes[n]
        kind = {"d": stat.S_IFDIR, "l": stat.S_IFLNK, "f": stat.S_IFREG}[node.kind]
        size = os.stat(self.model.path_of(n)).st_size if node.kind == "f" else \
            len(node.target) if node.kind == "l" else 4096
        t = node.mtime_ns
        return {"st_mode": kind | node.mode, "st_nlink": 2 if node.kind == "d" else 1, "st_size": size,
                "st_ino": n, "st_mtime": t, "st_atime": t, "st_ctime": t, "st_uid": 0, "st_gid": 0,
                "st_blocks": (size + 511) // 512, "st_blksize": 4096}

    def chmod(self, path: str | None, mode: int) -> int:
        self._step("chmod", path)
        if path is not None:
            self.model.nodes[self.model.lookup(path)].mode = mode & 0o7777
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        self._step("chown", path)
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        self._step("utimens", path)
        if path is not None:
            self.model.nodes[self.model.lookup(path)].mtime_ns = times[1] if times else _now()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        self._step("statfs")
        sv = os.statvfs(self.model.store)
        return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                            "f_files", "f_ffree", "f_favail", "f_namemax")}

    # ------------------------------------------------------------ names
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        self._step("readdir")
        n = self.dirs.get(fh) or self.model.lookup(path)
        kinds = {"d": stat.S_IFDIR, "l": stat.S_IFLNK, "f": stat.S_IFREG}
        # With use_ino, an entry needs its inode number: readdir(3) hides d_ino == 0.
        return [(".", {"st_mode": stat.S_IFDIR, "st_ino": n}, 0), ("..", {"st_mode": stat.S_IFDIR, "st_ino": 1}, 0),
                *((name, {"st_mode": kinds[self.model.nodes[c].kind], "st_ino": c}, 0)
                  for name, c in self.model.nodes[n].entries.items())]

    def opendir(self, path: str) -> int:
        self._step("opendir")
        n = self.model.lookup(path)
        if self.model.nodes[n].kind != "d":
            raise FsError(errno.ENOTDIR, path)
        self._fh += 1
        self.dirs[self._fh] = n
        return self._fh

    def releasedir(self, path: str | None, fh: int) -> int:
        self.dirs.pop(fh, None)
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        n = self.dirs.get(fh) or self.model.lookup(path or "/")
        self._step("fsyncdir", self.model.live_path(n))
        self.model.fsync_dir(n)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._step("mkdir", path)
        self.model.create(path, "d", mode & 0o7777, _now())
        return 0

    def rmdir(self, path: str) -> int:
        self._step("rmdir", path)
        self.model.unlink(path, _now(), folder=True)
        return 0

    def unlink(self, path: str) -> int:
        self._step("unlink", path)
        n = self.model.unlink(path, _now(), folder=False)
        self._free(n)
        return 0

    def rename(self, old: str, new: str) -> int:
        self._step("rename", old, new)
        self._free(self.model.rename(old, new, _now()))
        return 0

    def symlink(self, path: str, target: str) -> int:
        self._step("symlink", path)
        self.model.create(path, "l", 0o777, _now(), target=target)
        return 0

    def readlink(self, path: str) -> str:
        self._step("readlink")
        node = self.model.nodes[self.model.lookup(path)]
        if node.kind != "l":
            raise FsError(errno.EINVAL, path)
        return node.target

    def link(self, target: str, source: str) -> int:
        raise FsError(errno.EPERM, "powerfs has no hard links")

    # ------------------------------------------------------------ files
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        self._step("create", path)
        n = self.model.create(path, "f", mode & 0o7777, _now())
        return self._open_fd(n)

    def open(self, path: str, flags: int) -> int:
        if path == CTL:
            return CTL_FH
        self._step("open", path)
        n = self.model.lookup(path)
        if self.model.nodes[n].kind != "f":
            raise FsError(errno.EISDIR, path)
        return self._open_fd(n)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        self._step("read")
        return os.pread(self.files[fh][1], size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        if fh == CTL_FH:
            self._control(data)
            return len(data)
        n, fd = self.files[fh]
        self._step("write", self.model.live_path(n) if self.armed else None)
        os.pwrite(fd, data, offset)
        self.model.write(n, offset, len(data))
        self.model.nodes[n].mtime_ns = _now()
        return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if path == CTL or fh == CTL_FH:
            return 0
        self._step("truncate", path)
        n = self._node(path, fh)
        os.truncate(self.model.path_of(n), length)
        self.model.truncate(n, length)
        self.model.nodes[n].mtime_ns = _now()
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0

    def release(self, path: str | None, fh: int) -> int:
        if fh == CTL_FH or fh not in self.files:
            return 0
        n, fd = self.files.pop(fh)
        os.close(fd)
        self.opened[n] -= 1
        if not self.opened[n]:
            del self.opened[n]
            self._free(n)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        if fh == CTL_FH:
            return 0
        n = self.files[fh][0]
        self._step("fsync", self.model.live_path(n))
        self.model.fsync_file(n)
        return 0


def _root():
    from tests.chaos.powerfs.model import Node

    return Node("d", 0o755, _now())


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mount", type=Path)
    ap.add_argument("state", type=Path)
    ap.add_argument("--import", dest="tree", type=Path, default=None, help="start from this tree (moved in)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    args.state.mkdir(parents=True, exist_ok=True)
    ops = PowerFS(args.state, args.tree)
    assert ops.model.nodes[ROOT].kind == "d"
    fuse.FUSE(ops, str(args.mount), foreground=True, nothreads=True, hard_remove=True, use_ino=True,
              default_permissions=True, fsname="powerfs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
