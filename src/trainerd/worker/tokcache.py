"""The job's token cache on disk, memory-mapped: the worker's RSS does not grow with the file.

Format (a folder, complete or invisible through its manifest, see worker/data.prepare):
  input_ids.i32   every example's token ids, concatenated (raw little-endian int32)
  trainable.u8    1 where the token is a training target (raw uint8), same length
  offsets.npy     int64, n + 1 boundaries into the two flat files
  lines.npy       int32, the source line of each example
Tokenizing streams into the flat files in chunks, so no Python list of every token is
ever built; a loaded cache is np.memmap views, paged in as batches touch them. The two
per-example arrays are small (12 bytes per example) and stay ordinary .npy files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

IDS, MASK, OFFSETS, LINES = "input_ids.i32", "trainable.u8", "offsets.npy", "lines.npy"
FLUSH_TOKENS = 1 << 20  # tokens buffered in Python lists before they go to the files


class TokenWriter:
    """Appends examples to flat token files in `folder` (or, with folder=None, to arrays
    kept in memory, for small sets such as replayed examples)."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self._files: tuple[BinaryIO, BinaryIO] | None = None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            # Open for the writer's life (closed by finish or abort), not one block.
            self._files = (open(folder / IDS, "wb"), open(folder / MASK, "wb"))  # noqa: SIM115
        self._ids: list[int] = []
        self._mask: list[int] = []
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []  # folder=None only
        self.offsets: list[int] = [0]
        self.lines: list[int] = []

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, ids: list[int], mask: list[int], line: int) -> None:
        self._ids += ids
        self._mask += mask
        self.offsets.append(self.offsets[-1] + len(ids))
        self.lines.append(line)
        if len(self._ids) >= FLUSH_TOKENS:
            self._flush()

    def extend(self, ids: np.ndarray, mask: np.ndarray, lengths: np.ndarray, lines: np.ndarray) -> None:
        """Append already tokenized examples (e.g. the replay set after the job's own)."""
        self._flush()
        self._write(np.asarray(ids, np.int32), np.asarray(mask, np.uint8))
        for n, line in zip(lengths.tolist(), lines.tolist(), strict=True):
            self.offsets.append(self.offsets[-1] + int(n))
            self.lines.append(int(line))

    def _flush(self) -> None:
        if self._ids:
            self._write(np.asarray(self._ids, np.int32), np.asarray(self._mask, np.uint8))
            self._ids, self._mask = [], []

    def _write(self, ids: np.ndarray, mask: np.ndarray) -> None:
        if self._files is None:
            self._chunks.append((ids, mask))
            return
        ids.astype("<i4", copy=False).tofile(self._files[0])
        mask.tofile(self._files[1])

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, trainable, offsets, lines): memory-mapped when written to a folder."""
        self._flush()
        offsets, lines = np.asarray(self.offsets, np.int64), np.asarray(self.lines, np.int32)
        if self._files is None:
            if not self._chunks:
                return np.zeros(0, np.int32), np.zeros(0, np.uint8), offsets, lines
            return (np.concatenate([c[0] for c in self._chunks]), np.concatenate([c[1] for c in self._chunks]),
                    offsets, lines)
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        assert self.folder is not None
        np.save(self.folder / OFFSETS, offsets)
        np.save(self.folder / LINES, lines)
        return load(self.folder)

    def abort(self) -> None:
        if self._files is not None:
            for f in self._files:
                f.close()


def load(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cache in `folder` as read-only memory maps (the per-example arrays loaded)."""
    offsets = np.load(folder / OFFSETS)
    n = int(offsets[-1])
    if n == 0:  # np.memmap refuses an empty file
        return np.zeros(0, np.int32), np.zeros(0, np.uint8), offsets, np.load(folder / LINES)
    ids = np.memmap(folder / IDS, dtype="<i4", mode="r", shape=(n,))
    mask = np.memmap(folder / MASK, dtype=np.uint8, mode="r", shape=(n,))
    return ids, mask, offsets, np.load(folder / LINES)


def is_cache(folder: Path) -> bool:
    return (folder / IDS).is_file() and (folder / OFFSETS).is_file()
