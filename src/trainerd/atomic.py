"""The one place that writes things so a crash leaves either the old or the new version.

Recipe (DESIGN.md principle 3): temp file in the same folder, flush + fsync, os.replace,
fsync the folder. A checkpoint or model version directory additionally gets a manifest
(sizes + sha256 of every file) written last, so "complete" is checkable after the fact.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable (the entry lives in the folder)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes, mode: int = 0o644, sync: bool = True) -> None:
    """Atomically replace `path` with `data`.

    sync=False skips the fsyncs for bulk work that makes them in one `Barrier` at the end
    and can rebuild the file if a crash loses it (the queue's intake).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        # Leave no temp behind on error; the old file (if any) is untouched.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync:
        fsync_dir(path.parent)


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    write_bytes(path, text.encode("utf-8"), mode)


def write_json(path: Path, obj: Any, mode: int = 0o644, sync: bool = True) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), mode, sync)


def read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def rename(src: Path, dst: Path, sync: bool = True) -> None:
    """One state transition: rename, then make both folders' entries durable.

    Fails (FileExistsError) rather than overwrite an existing directory target, so two
    racing movers cannot silently merge or clobber a job.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise FileExistsError(f"refusing to overwrite {dst}")
    os.rename(src, dst)
    if sync:
        fsync_dir(dst.parent)
        if src.parent != dst.parent:
            fsync_dir(src.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or folder by name (a read-only descriptor is enough on Linux)."""
    if os.path.isdir(path):
        return fsync_dir(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Barrier:
    """The fsyncs of a batch of unsynced writes, done together at its end: every file
    first, then every folder (whose entries name them), each path once, several at a time
    so the filesystem can commit them together.

    Not syncfs(2): that is not passed on by FUSE (nor made durable by NFS), so on such a
    base dir a batch "synced" that way was never made durable (the power-cut campaign of
    issue 20 runs the base dir on FUSE). A path gone since it was added (moved on by the
    CLI, say) is skipped: whoever moved it made its new place durable."""

    def __init__(self, threads: int = 16):
        self.threads = threads
        self._files: dict[str, None] = {}
        self._dirs: dict[str, None] = {}

    def file(self, path: Path) -> None:
        self._files[str(path)] = None

    def folder(self, path: Path) -> None:
        self._dirs[str(path)] = None

    def flush(self) -> None:
        files, dirs = list(self._files), list(self._dirs)
        self._files, self._dirs = {}, {}
        if not files and not dirs:
            return
        with ThreadPoolExecutor(max_workers=max(1, min(self.threads, len(files) + len(dirs)))) as pool:
            for batch in (files, dirs):  # a name is durable only with what it names
                for err in pool.map(_fsync_or_gone, batch):
                    if err is not None:
                        raise err


def _fsync_or_gone(path: str) -> OSError | None:
    try:
        fsync_path(Path(path))
    except FileNotFoundError:
        return None
    except OSError as e:
        return e
    return None


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (files a library wrote without fsync)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def make_readable(root: Path) -> None:
    """0755 folders and 0644 files under `root` (and root itself), whatever the umask:
    a serving user must read what trainerd publishes and exports. Libraries write weights
    0600 (safetensors) or by the umask (a hardened unit's 0027). Symlinks are left alone."""
    root = Path(root)
    os.chmod(root, 0o755)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o644)


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _listed_files(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """fsync everything under `root`, then write its manifest last.

    The manifest's presence and agreement with the files is what makes the directory
    "complete"; callers rename the directory into place only after this returns.
    """
    root = Path(root)
    fsync_tree(root)
    files = {
        rel: {"size": (root / rel).stat().st_size, "sha256": sha256_file(root / rel)}
        for rel in _listed_files(root)
    }
    manifest = dict(meta, files=files)
    write_json(root / MANIFEST, manifest)
    return manifest


class ManifestError(Exception):
    """A directory whose manifest is missing or disagrees with its files."""


def verify_manifest(root: Path, check_hashes: bool = True) -> dict[str, Any]:
    """Return the manifest if every listed file exists with its size (and hash); else raise."""
    root = Path(root)
    try:
        manifest = read_json(root / MANIFEST)
    except FileNotFoundError:
        raise ManifestError(f"{root}: no {MANIFEST} (written last, so the save never finished)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{root}/{MANIFEST}: unreadable ({e})") from None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ManifestError(f"{root}/{MANIFEST}: lists no files")
    for rel, info in files.items():
        p = root / rel
        if not p.is_file():
            raise ManifestError(f"{root}: {rel} is missing")
        size = p.stat().st_size
        if size != info.get("size"):
            raise ManifestError(f"{root}: {rel} is {size} bytes, manifest says {info.get('size')}")
        if check_hashes and sha256_file(p) != info.get("sha256"):
            raise ManifestError(f"{root}: {rel} does not match its sha256 in the manifest")
    return manifest
