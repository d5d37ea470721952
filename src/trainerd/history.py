"""Finished jobs in the order they finished, from the ledger, without reading job.json.

A job id sorts by arrival, not by finish: a big file that arrived first finishes last, and
a requeued job finishes again months after it arrived. The ledger (state.db) records a
`done` / `failed` / `rejected` event each time a job enters done/ or failed/, and the
events_kind index walks those newest first, so the most recent N finished jobs cost N-ish
rows, whatever the history holds. The folder listing says which jobs are still there (a
removed or requeued job's old events are skipped).

Jobs the ledger does not know (state.db deleted, or jobs older than it) follow, newest
arrival first: the best order available without opening every job.json.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainerd import dircache
from trainerd.jobs import JobMeta, JobState
from trainerd.ledger import open_ro
from trainerd.paths import Layout
from trainerd.queue import JobRef

FINISH_KINDS: dict[JobState, tuple[str, ...]] = {
    JobState.DONE: ("done",),
    JobState.FAILED: ("failed", "rejected"),  # a rejected file goes straight to failed/
}
BATCH = 256  # events read per query while walking back
TRAINED_EVENT = "trained"  # the supervisor's record of a finished job: counters, version


@dataclass
class Page:
    refs: list[JobRef]  # newest finish first
    total: int  # jobs in the folders asked for


def _folder(layout: Layout, state: JobState) -> Path:
    return layout.done if state == JobState.DONE else layout.failed


def _names(folder: Path) -> set[str]:
    try:
        return set(dircache.entries(folder))
    except FileNotFoundError:
        return set()


def _events_newest_first(con: sqlite3.Connection, kinds: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(job_id, kind) of finish events, newest first, in batches (stops when the caller does)."""
    marks = ",".join("?" * len(kinds))
    before = None
    while True:
        rows = con.execute(
            f"SELECT id, job_id, kind FROM events WHERE kind IN ({marks}) AND id < ? ORDER BY id DESC LIMIT ?",
            (*kinds, before if before is not None else 1 << 62, BATCH)).fetchall()
        if not rows:
            return
        for _id, job_id, kind in rows:
            yield job_id, kind
        before = rows[-1][0]


def finished(layout: Layout, states: tuple[JobState, ...] = (JobState.DONE, JobState.FAILED),
             limit: int | None = None, offset: int = 0) -> Page:
    """Jobs in done/ and/or failed/, newest finish first, `offset` skipped, at most `limit`."""
    folders = {st: _folder(layout, st) for st in states}
    names = {st: _names(folders[st]) for st in states}
    state_of = {kind: st for st in states for kind in FINISH_KINDS[st]}
    want = None if limit is None else offset + limit
    ordered: list[JobRef] = []
    seen: set[str] = set()
    con = open_ro(layout.state_db)
    if con is not None:
        try:
            for job_id, kind in _events_newest_first(con, tuple(state_of)):
                st = state_of[kind]
                if job_id in seen or job_id not in names[st]:
                    continue  # finished again later, or no longer there (removed, requeued)
                seen.add(job_id)
                ordered.append(JobRef(job_id, st, folders[st] / job_id))
                if want is not None and len(ordered) >= want:
                    break
        except sqlite3.Error:
            pass  # an old or damaged state.db: arrival order for all
        finally:
            con.close()
    if want is None or len(ordered) < want:
        rest = sorted(((n, st) for st in states for n in names[st] if n not in seen), reverse=True)
        ordered += [JobRef(n, st, folders[st] / n) for n, st in rest[: None if want is None else want - len(ordered)]]
    end = None if limit is None else offset + limit
    return Page(ordered[offset:end], sum(len(v) for v in names.values()))


def produced_versions(layout: Layout, job_ids: list[str]) -> dict[str, str]:
    """job id -> the model version its finish published (the supervisor's `trained` event)."""
    con = open_ro(layout.state_db)
    if con is None or not job_ids:
        return {}
    out: dict[str, str] = {}
    try:
        for job_id in job_ids:  # events_job index: one short lookup each
            row = con.execute("SELECT json_extract(data, '$.version') FROM events WHERE job_id = ? "
                              "AND kind = ? ORDER BY id DESC LIMIT 1", (job_id, TRAINED_EVENT)).fetchone()
            if row and row[0]:
                out[job_id] = row[0]
    except sqlite3.Error:
        return out
    finally:
        con.close()
    return out


def trained_event(meta: JobMeta, version: str | None) -> dict[str, Any]:
    """The data of the ledger's `trained` event for a finished job: what the counters and
    the duration histogram sum, recorded once, so removing the job later changes nothing."""
    ended = [a for a in meta.attempts if a.ended_at is not None]
    return {"examples_done": meta.examples_done, "dropped": meta.dropped, "truncated": meta.truncated,
            "sequences": meta.sequences, "tokens": meta.tokens, "steps": meta.steps_done,
            "train_seconds": sum(a.ended_at - a.started_at for a in ended if a.ended_at),
            "first_loss": meta.first_loss, "last_loss": meta.last_loss, "version": version,
            "name": meta.original_name}

