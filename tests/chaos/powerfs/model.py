"""The in-memory model behind powerfs: what a disk with a volatile cache has made durable.

The *live* tree is what processes see (file bytes in the store, one file per node, so a
node keeps its identity across renames and while open but unlinked); the *durable*
state is what a power cut leaves (per node: kind, mode, mtime, a file's bytes, a folder's
entries). Between them, a log of pending metadata operations (create, unlink, rename)
and, per file, of pending writes and truncates. fsync(file) makes its bytes durable, not
its name; fsync(folder) makes the pending operations on its entries durable, with the
earlier ones each depends on (same node or name; for removing a folder, what emptied
it); a rename is one operation. Cut modes: `all` (every pending thing lost), `prefix`
(the first k metadata operations, in order), `subset` (random creates and unlinks closed
under dependencies, a name also needing its folder's creation; no rename without its
folder's fsync); in the last two each pending write is lost, kept or torn. The rules in
full: docs/RELIABILITY.md, "Power cuts".
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = 1
Kind = Literal["f", "d", "l"]
MODES = ("all", "prefix", "subset")


class FsError(OSError):
    """An errno for the FUSE layer to return."""

    def __init__(self, code: int, what: str = ""):
        super().__init__(code, os.strerror(code), what)


@dataclass
class Node:
    kind: Kind
    mode: int
    mtime_ns: int
    target: str = ""  # symlinks
    entries: dict[str, int] = field(default_factory=dict)  # folders
    parent: tuple[int, str] | None = None  # no hard links: at most one name


@dataclass
class Durable:
    kind: Kind
    mode: int
    mtime_ns: int
    target: str = ""
    data: bytes = b""
    entries: dict[str, int] = field(default_factory=dict)


@dataclass
class Op:
    """One metadata operation. `node` is what it names; `slots` the (folder, name) pairs
    whose binding it changes; `created` a new node's initial durable form."""

    seq: int
    kind: Literal["create", "unlink", "rename"]
    node: int
    slots: tuple[tuple[int, str], ...]
    created: Durable | None = None
    replaced: int | None = None  # rename onto an existing name

    @property
    def dirs(self) -> set[int]:
        return {d for d, _n in self.slots}


class Model:
    def __init__(self, store: Path):
        self.store = store
        self.nodes: dict[int, Node] = {}
        self.durable: dict[int, Durable] = {}
        self.pending: dict[int, Op] = {}  # seq -> op, in order
        self.data_log: dict[int, list[tuple[str, int, int]]] = {}  # node -> [("w", off, len) | ("t", size, 0)]
        # Indexes of pending seqs, so a dependency lookup does not scan the whole log.
        self._by_node: dict[int, list[int]] = {}
        self._by_slot: dict[tuple[int, str], list[int]] = {}
        self._by_dir: dict[int, list[int]] = {}
        self._seq = 0
        self._next = ROOT
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------ set-up
    def new_id(self) -> int:
        n = self._next
        self._next += 1
        return n

    def path_of(self, node: int) -> Path:
        return self.store / str(node)

    def import_tree(self, src: Path) -> None:
        """Adopt a folder as the durable starting state (a fresh disk after a cut); files
        are moved into the store, not copied."""
        self.store.mkdir(parents=True, exist_ok=True)
        self._import(src, None, "")
        self.sync_all()

    def _import(self, p: Path, parent: int | None, name: str) -> int:
        st = os.lstat(p)
        n = self.new_id()
        if p.is_symlink():
            node = Node("l", 0o777, st.st_mtime_ns, target=os.readlink(p))
        elif p.is_dir():
            node = Node("d", st.st_mode & 0o7777, st.st_mtime_ns)
            for child in sorted(os.listdir(p)):
                node.entries[child] = self._import(p / child, n, child)
        else:
            node = Node("f", st.st_mode & 0o7777, st.st_mtime_ns)
            os.rename(p, self.path_of(n))
        node.parent = (parent, name) if parent is not None else None
        self.nodes[n] = node
        return n

    # ------------------------------------------------------------ live tree
    def lookup(self, path: str) -> int:
        n = ROOT
        for part in path.strip("/").split("/") if path.strip("/") else []:
            node = self.nodes[n]
            if node.kind != "d":
                raise FsError(20, path)  # ENOTDIR
            if part not in node.entries:
                raise FsError(2, path)  # ENOENT
            n = node.entries[part]
        return n

    def split(self, path: str) -> tuple[int, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self.lookup(head or "/")
        if self.nodes[parent].kind != "d":
            raise FsError(20, path)
        return parent, name

    def live_path(self, node: int) -> str:
        parts = []
        while node != ROOT:
            par = self.nodes[node].parent
            if par is None:
                return ""  # unlinked
            node, name = par
            parts.append(name)
        return "/" + "/".join(reversed(parts))

    def _log(self, op: Op) -> Op:
        self.pending[op.seq] = op
        for key, index in self._keys(op):
            index.setdefault(key, []).append(op.seq)
        return op

    def _keys(self, op: Op) -> list[tuple[Any, dict]]:
        return [(op.node, self._by_node), *((s, self._by_slot) for s in op.slots),
                *((d, self._by_dir) for d in op.dirs)]

    def _forget(self, op: Op) -> None:
        self.pending.pop(op.seq, None)
        for key, index in self._keys(op):
            seqs = index.get(key, [])
            if op.seq in seqs:
                seqs.remove(op.seq)
            if not seqs:
                index.pop(key, None)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def create(self, path: str, kind: Kind, mode: int, now_ns: int, target: str = "") -> int:
        parent, name = self.split(path)
        if name in self.nodes[parent].entries:
            raise FsError(17, path)  # EEXIST
        n = self.new_id()
        self.nodes[n] = Node(kind, mode, now_ns, target=target, parent=(parent, name))
        self.nodes[parent].entries[name] = n
        if kind == "f":
            self.path_of(n).touch(mode=0o600)
        self._log(Op(self._next_seq(), "create", n, ((parent, name),),
                     created=Durable(kind, mode, now_ns, target=target)))
        self.nodes[parent].mtime_ns = now_ns
        return n

    def unlink(self, path: str, now_ns: int, folder: bool) -> int:
        parent, name = self.split(path)
        n = self.lookup(path)
        node = self.nodes[n]
        if folder != (node.kind == "d"):
            raise FsError(20 if folder else 21, path)  # ENOTDIR / EISDIR
        if folder and node.entries:
            raise FsError(39, path)  # ENOTEMPTY
        del self.nodes[parent].entries[name]
        node.parent = None
        self.nodes[parent].mtime_ns = now_ns
        self._log(Op(self._next_seq(), "unlink", n, ((parent, name),)))
        return n

    def rename(self, old: str, new: str, now_ns: int) -> int | None:
        """Returns the node replaced at `new`, if any (the caller frees it when unused)."""
        sp, sn = self.split(old)
        n = self.lookup(old)
        dp, dn = self.split(new)
        if (sp, sn) == (dp, dn):
            return None
        anc: int | None = dp  # a folder cannot move inside itself
        while anc is not None:
            if anc == n:
                raise FsError(22, new)  # EINVAL
            par = self.nodes[anc].parent
            anc = par[0] if par else None
        old_node = self.nodes[dp].entries.get(dn)
        if old_node is not None:
            a, b = self.nodes[n], self.nodes[old_node]
            if b.kind == "d" and a.kind != "d":
                raise FsError(21, new)
            if a.kind == "d" and b.kind != "d":
                raise FsError(20, new)
            if b.kind == "d" and b.entries:
                raise FsError(39, new)
            self.nodes[old_node].parent = None
        del self.nodes[sp].entries[sn]
        self.nodes[dp].entries[dn] = n
        self.nodes[n].parent = (dp, dn)
        self.nodes[sp].mtime_ns = self.nodes[dp].mtime_ns = now_ns
        self._log(Op(self._next_seq(), "rename", n, ((sp, sn), (dp, dn)), replaced=old_node))
        return old_node

    def write(self, node: int, offset: int, length: int) -> None:
        log = self.data_log.setdefault(node, [])
        if log and log[-1][0] == "w" and log[-1][1] <= offset <= log[-1][1] + log[-1][2]:
            start = log[-1][1]  # an append or overwrite of the last write: one record
            log[-1] = ("w", start, max(log[-1][1] + log[-1][2], offset + length) - start)
        else:
            log.append(("w", offset, length))

    def truncate(self, node: int, size: int) -> None:
        self.data_log.setdefault(node, []).append(("t", size, 0))

    def live_bytes(self, node: int) -> bytes:
        try:
            return self.path_of(node).read_bytes()
        except FileNotFoundError:  # freed: nothing newer than the durable copy exists
            return self.durable[node].data if node in self.durable else b""

    # ------------------------------------------------------------ durability
    def fsync_file(self, n: int) -> None:
        node = self.nodes[n]
        d = self.durable.get(n)
        if d is None:
            d = self.durable[n] = Durable(node.kind, node.mode, node.mtime_ns, target=node.target)
        d.mode, d.mtime_ns = node.mode, node.mtime_ns
        if node.kind == "f" and (n in self.data_log or not d.data):
            d.data = self.live_bytes(n)
        self.data_log.pop(n, None)

    def fsync_dir(self, n: int) -> None:
        todo = [self.pending[s] for s in self._by_dir.get(n, [])]
        for op in sorted(self._closure(todo, strong=False), key=lambda o: o.seq):
            self._apply(op)
        if n in self.durable:
            self.durable[n].mode = self.nodes[n].mode

    def sync_all(self) -> None:
        """Everything durable (`sync` after setting a base dir up)."""
        for op in list(self.pending.values()):
            self._apply(op)
        for n, node in list(self.nodes.items()):
            if node.parent is None and n != ROOT:
                continue  # unlinked
            self.fsync_file(n)
            if node.kind == "d":
                self.durable[n].entries = dict(node.entries)

    def _deps(self, k: Op, strong: bool) -> list[Op]:
        """Earlier pending ops `k` cannot be durable without (see the module doc)."""
        seqs = list(self._by_node.get(k.node, []))
        for s in k.slots:
            seqs += self._by_slot.get(s, [])
        if k.kind == "unlink":  # removing a folder: after what emptied it
            seqs += self._by_dir.get(k.node, [])
        if strong:  # a name in a folder: after the folder's creation
            for d in k.dirs:
                seqs += [s for s in self._by_node.get(d, []) if self.pending[s].kind == "create"]
        return [self.pending[s] for s in sorted(set(seqs)) if s < k.seq and s in self.pending]

    def _closure(self, ops: list[Op], strong: bool) -> list[Op]:
        seen: dict[int, Op] = {}
        stack = list(ops)
        while stack:
            op = stack.pop()
            if op.seq in seen:
                continue
            seen[op.seq] = op
            stack += self._deps(op, strong)
        return list(seen.values())

    def _apply(self, op: Op, into: dict[int, Durable] | None = None) -> None:
        """Make `op` durable (or apply it to a copy of the durable state: a cut's)."""
        state = self.durable if into is None else into
        if into is None:
            self._forget(op)
        if op.kind == "create":
            c = op.created or Durable("f", 0o644, 0)
            state.setdefault(op.node, Durable(c.kind, c.mode, c.mtime_ns, c.target))
            d, name = op.slots[0]
            self._dir(state, d).entries[name] = op.node
        elif op.kind == "unlink":
            d, name = op.slots[0]
            entries = self._dir(state, d).entries
            if entries.get(name) == op.node:
                del entries[name]
            if into is None and self.nodes.get(op.node) is not None and self.nodes[op.node].parent is None:
                state.pop(op.node, None)  # gone live and on disk: forget its bytes
        else:
            (sd, sn), (dd, dn) = op.slots
            src = self._dir(state, sd).entries
            if src.get(sn) == op.node:
                del src[sn]
            self._dir(state, dd).entries[dn] = op.node
            gone = op.replaced
            if into is None and gone is not None and self.nodes.get(gone) and self.nodes[gone].parent is None:
                state.pop(gone, None)

    def _dir(self, state: dict[int, Durable], n: int) -> Durable:
        if n not in state:  # a folder whose own creation is not durable: unreachable for now
            node = self.nodes.get(n)
            state[n] = Durable("d", node.mode if node else 0o755, node.mtime_ns if node else 0)
        return state[n]

    # ------------------------------------------------------------ the cut
    def crash_state(self, mode: str, rng: random.Random) -> dict[int, Durable]:
        """The durable state a power cut in `mode` leaves (the live state is not changed)."""
        if mode not in MODES:
            raise ValueError(f"cut mode {mode!r}: one of {MODES}")
        state = {n: Durable(d.kind, d.mode, d.mtime_ns, d.target, d.data, dict(d.entries))
                 for n, d in self.durable.items()}
        if mode == "all":
            return state
        ops = list(self.pending.values())
        if mode == "prefix":
            kept = ops[:rng.randint(0, len(ops))]
        else:
            p = rng.choice((0.25, 0.5, 0.75))
            survived: set[int] = set()
            for op in ops:
                if op.kind == "rename":
                    continue  # a rename is durable only by its folder's fsync (issue 20)
                if all(j.seq in survived for j in self._deps(op, strong=True)) and rng.random() < p:
                    survived.add(op.seq)
            kept = [op for op in ops if op.seq in survived]
        for op in kept:
            self._apply(op, into=state)
        for n, log in self.data_log.items():
            if n in state and state[n].kind == "f":
                state[n].data = self._torn(state[n].data, self.live_bytes(n), log, rng)
        return state

    @staticmethod
    def _torn(old: bytes, live: bytes, log: list[tuple[str, int, int]], rng: random.Random) -> bytes:
        how = rng.choice(("lost", "flushed", "torn"))
        if how == "lost":
            return old
        if how == "flushed":
            return live
        out = bytearray(old)
        for kind, a, b in log:
            if kind == "t":
                del out[a:]
                out.extend(bytes(max(0, a - len(out))))
            elif rng.random() < 0.5:
                chunk = live[a:a + b].ljust(b, b"\0")
                out.extend(bytes(max(0, a - len(out))))
                out[a:a + b] = chunk
        return bytes(out)


def materialize(state: dict[int, Durable], dest: Path) -> int:
    """Write what is reachable from the root of a durable state as a real folder tree.
    Returns the number of entries written."""
    count = 0

    def put(n: int, p: Path) -> None:
        nonlocal count
        d = state[n]
        count += 1
        if d.kind == "d":
            p.mkdir(exist_ok=p == dest)
            for name, child in sorted(d.entries.items()):
                if child in state:
                    put(child, p / name)
            os.chmod(p, d.mode)
        elif d.kind == "l":
            os.symlink(d.target, p)
        else:
            p.write_bytes(d.data)
            os.chmod(p, d.mode)
            os.utime(p, ns=(d.mtime_ns, d.mtime_ns))

    dest.mkdir(parents=True, exist_ok=True)
    put(ROOT, dest)
    return count
