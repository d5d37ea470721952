"""The memory-mapped token cache: what is written streams to disk, what is read is mapped,
so a worker's anonymous memory does not grow with the size of the job's file."""

import subprocess
import sys

import numpy as np

from trainerd.worker import tokcache
from trainerd.worker.tokcache import TokenWriter


def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = int(rng.integers(1, 50))
        yield rng.integers(0, 5000, k).tolist(), rng.integers(0, 2, k).tolist(), i + 1


def test_a_folder_cache_reads_back_what_memory_would_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(tokcache, "FLUSH_TOKENS", 64)  # many flushes
    disk, mem = TokenWriter(tmp_path / "c"), TokenWriter()
    for ids, mask, line in _examples(300):
        disk.add(ids, mask, line)
        mem.add(ids, mask, line)
    extra = next(_examples(1, seed=1))
    for w in (disk, mem):
        w.extend(np.asarray(extra[0]), np.asarray(extra[1]), np.asarray([len(extra[0])]), np.asarray([-7]))
    a, b = disk.finish(), mem.finish()
    assert isinstance(a[0], np.memmap) and isinstance(a[1], np.memmap)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[3][-1] == -7 and a[2][-1] == len(a[0])
    assert not a[0].flags.writeable  # a resumed attempt can never scribble on its cache


def test_a_big_cache_is_mapped_not_loaded(tmp_path):
    """A real process maps a 25M-token cache (100 MB of ids), reads examples across it as
    a training epoch would, and its anonymous memory grows by a fraction of that."""
    w = TokenWriter(tmp_path / "big")
    ids, mask = list(range(1000)), [1] * 1000
    for i in range(25_000):
        w.add(ids, mask, i + 1)
    w.finish()
    code = f"""
import numpy as np
from pathlib import Path
from trainerd.worker.data import JobDataset, Tokenized
from trainerd.worker.tokcache import load

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

before = anon()
tok = Tokenized(*load(Path({str(tmp_path / "big")!r})))
ds = JobDataset(tok, np.random.default_rng(0).permutation(len(tok)))
assert sum(len(ds[k]["input_ids"]) for k in range(0, len(ds), 25)) == 1000 * 1000
grown = anon() - before
print(grown)
assert grown < 40 * 2**20, grown
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
