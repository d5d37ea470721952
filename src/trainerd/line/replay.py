"""Replay against forgetting: old examples drawn from done jobs' data, mixed into a new
job's epoch. The pick is seeded by the job id and written to the job dir, so every attempt
of a job replays exactly the same examples."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.config import DataMapConfig
from trainerd.formats import NO_MAP, FileKindError, iter_records, parse, to_json
from trainerd.gate import held_jobs
from trainerd.jobs import DATA, TOKEN_CACHE
from trainerd.paths import Layout

log = logging.getLogger("trainerd.line.replay")

TOKENS_CACHE = TOKEN_CACHE  # the tokenized cache of data.jsonl (worker/data.py)
TOKENS_REPLAY = "tokens-replay"  # ... and of replay.jsonl
REPLAY_JSONL = "replay.jsonl"  # old examples mixed into a job (see replay_for_job)
REPLAY_JSON = "replay.json"
DATA_REMOVED = "data-removed.json"  # retention removed the job's data files (why, when)


def _seed(job_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"replay:{job_id}".encode()).digest()[:8], "big")


def nonblank_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(record number, raw JSON) of each example-looking record: lines, or elements of a
    JSON array file. A file that is neither yields nothing (intake refused such files)."""
    with open(path, "rb") as f:
        try:
            for rec in iter_records(f):
                if rec.raw is not None and rec.raw.strip():
                    yield rec.number, rec.raw
        except FileKindError:
            return


def replay_pool(layout: Layout, exclude: str | None = None) -> list[Path]:
    """Done jobs' data files, in arrival order (their ids sort by arrival); not those of
    jobs the eval gate held (their training is not in the line)."""
    if not layout.done.is_dir():
        return []
    out = []
    held = held_jobs(layout)
    for d in sorted(layout.done.iterdir()):
        p = d / DATA
        if d.name != exclude and d.name not in held and p.is_file() and not p.is_symlink():
            out.append(p)
    return out


def sample_examples(layout: Layout, k: int, seed: int, exclude: str | None = None,
                    data_map: DataMapConfig = NO_MAP) -> tuple[list[bytes], dict[str, list[int]], int]:
    """k examples drawn uniformly, without replacement, from every done job's data, by a
    seeded generator: (JSON lines in a standard format, {job id: record numbers}, pool
    size). Two streaming passes, so memory holds only the k picked examples."""
    pool = replay_pool(layout, exclude)
    counts = [sum(1 for _ in nonblank_lines(p)) for p in pool]
    total = sum(counts)
    picks = set(random.Random(seed).sample(range(total), min(k, total)))
    rows: list[bytes] = []
    sources: dict[str, list[int]] = {}
    i = 0
    for p, count in zip(pool, counts, strict=True):
        if not any(i <= j < i + count for j in picks):  # nothing picked here: skip the file
            i += count
            continue
        for n, raw in nonblank_lines(p):
            if i in picks:
                try:  # intake validated it; a file edited since is not trusted blindly
                    ex = parse(json.loads(raw), data_map)
                except ValueError:  # FormatError included
                    ex = None
                if ex is not None:  # one line each, whatever layout the job's file had
                    rows.append(json.dumps(to_json(ex), ensure_ascii=False).encode())
                    sources.setdefault(p.parent.name, []).append(n)
            i += 1
    return rows, sources, total


def replay_for_job(layout: Layout, job_dir: Path, fraction: float, new_examples: int,
                   max_examples: int = 2000, data_map: DataMapConfig = NO_MAP) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Old examples to mix into this job's epoch against forgetting, and a record of them
    for the job's metadata (None when replay is off or there is nothing to replay).

    ceil(fraction x new examples) examples (at most max_examples) are drawn from the done
    jobs, seeded by the job id. The pick is written to the job dir (replay.jsonl, then
    replay.json with its sha256, last) at the first attempt and reused by every later
    attempt, so resuming skips exactly what was trained even if more jobs finished since."""
    job_dir = Path(job_dir)
    if fraction <= 0 or max_examples <= 0:
        return [], None
    try:
        record = atomic.read_json(job_dir / REPLAY_JSON)
        data = (job_dir / REPLAY_JSONL).read_bytes()
        if hashlib.sha256(data).hexdigest() == record["sha256"]:
            return [json.loads(x) for x in data.splitlines() if x.strip()], _summary(record)
        log.warning("%s does not match its record; drawing the replay sample again", REPLAY_JSONL)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    k = min(max_examples, math.ceil(fraction * new_examples))
    seed = _seed(job_dir.name)
    rows, sources, total = sample_examples(layout, k, seed, exclude=job_dir.name, data_map=data_map)
    if not rows:
        return [], None
    data = b"".join(r + b"\n" for r in rows)
    atomic.write_bytes(job_dir / REPLAY_JSONL, data)
    record = {"fraction": fraction, "seed": seed, "examples": len(rows), "pool_examples": total,
              "sources": sources, "sha256": hashlib.sha256(data).hexdigest(), "created_at": time.time()}
    atomic.write_json(job_dir / REPLAY_JSON, record)
    return [json.loads(r) for r in rows], _summary(record)


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """The record without per-line detail (which stays in the job's replay.json)."""
    return {**{k: v for k, v in record.items() if k != "sources"},
            "sources": {job: len(lines) for job, lines in record.get("sources", {}).items()}}

