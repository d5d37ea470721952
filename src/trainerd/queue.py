"""The job queue: ingest, claim, finish, fail, release, recover — renames only.

This module is the only one that moves job directories (DESIGN.md seams). A job's state
is the folder it is in; each transition is one rename inside the base dir. Anything that
edits a job.json outside the daemon (the CLI's move/requeue) first renames the job into a
private staging folder under jobs/.incoming/ and holds a flock on it, so the daemon can
never claim a job while someone else is rewriting it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainerd import atomic, dircache, validate
from trainerd.config import DataMapConfig, QueueConfig
from trainerd.formats import NO_MAP
from trainerd.inbox import (
    NOT_DELIVERED_SUFFIXES,
    REJECTED_MARK,
    TOO_DEEP,
    Entry,
    Settler,
    Skipped,
    note_path,
    scan,
)
from trainerd.jobs import (
    DATA,
    ERROR_JSON,
    JOB_JSON,
    METRICS,
    PROGRESS_JSON,
    WORKER_ERROR,
    WORKER_LOG,
    Attempt,
    JobMeta,
    JobState,
    Outcome,
    Priority,
)
from trainerd.names import printable
from trainerd.paths import PRIORITIES, Layout

log = logging.getLogger("trainerd.queue")

__all__ = ["NOT_DELIVERED_SUFFIXES", "REJECTED_MARK", "ORIGINAL", "Queue", "QueueError", "JobRef"]
# Running out of file descriptors is the daemon's condition, not the entry's: never a rejection.
FD_EXHAUSTED = (errno.EMFILE, errno.ENFILE)
# How often ingest looks for intakes abandoned by an error (e.g. a full disk) to finish them.
STAGING_RETRY_SECONDS = 5.0
ORIGINAL = "original"  # a rejected non-file inbox entry (symlink, FIFO, folder) is kept under this name

EventSink = Callable[..., None]
JOB_ID = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9]{6}-[A-Za-z0-9._-]{1,40}")


class QueueError(Exception):
    """A queue operation that cannot be done, with what to do instead."""


@dataclass(frozen=True)
class JobRef:
    id: str
    state: JobState
    path: Path
    priority: Priority | None = None  # for queued jobs: the folder it is in

    def meta(self) -> JobMeta:
        return JobMeta.load(self.path)


def _slug(name: str) -> str:
    stem = name.removesuffix(".jsonl").removesuffix(".json")
    return (re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "job")[:40]


class Intake(list):
    """The jobs made by one ingest() call; `more` is True when the time budget ran out."""

    more: bool = False


class _HashingReader:
    """Feeds the validator and sha256 from one pass over the file."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def peek(self, n: int = 1) -> bytes:
        return self._f.peek(n)

    def _seen(self, data: bytes) -> bytes:
        self.sha.update(data)
        self.size += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        return self._seen(self._f.readline(limit))

    def read(self, n: int = -1) -> bytes:
        return self._seen(self._f.read(n))


def _hash_and_validate(path: Path, name: str, data_map: DataMapConfig = NO_MAP
                       ) -> tuple[validate.Report, str, int]:
    with open(path, "rb") as f:
        reader = _HashingReader(f)
        report = validate.check_stream(reader, name, data_map, name)
        reader.read()  # a file refused early (gzip, UTF-16) is still hashed whole
    return report, reader.sha.hexdigest(), reader.size


class Queue:
    def __init__(self, layout: Layout, cfg: QueueConfig, on_event: EventSink | None = None,
                 data_map: DataMapConfig = NO_MAP):
        self.layout = layout
        self.cfg = cfg
        self.data_map = data_map  # [data.map]: the user's own format is valid at intake too
        self._on_event = on_event
        self._last_id_us = 0
        self._rejected_in_place: set[tuple[str, int, int]] = set()
        # Intake writes without per-file fsyncs and makes them all at the end of the slice
        # (one Barrier): every intermediate state is recoverable (see recover), so a crash
        # before it loses nothing, and 10,000 files are taken in seconds, not a minute.
        # "queued" is said only after the barrier: then it is true after a power cut.
        self._sync = True
        self._barrier: atomic.Barrier | None = None
        self._retry_at = 0.0  # monotonic time of the next look for abandoned intakes
        self._retry_noted: set[str] = set()
        self.settler = Settler()  # what this process has seen of each inbox entry
        self.blocked: str | None = None  # why intake cannot go on right now (e.g. no file descriptors)

    # ----------------------------------------------------------------- helpers
    def _event(self, kind: str, job_id: str | None = None, **data: Any) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, job_id, **data)
            except Exception:  # history must never break the queue
                log.exception("could not record event %s for %s", kind, job_id)

    def _all_state_dirs(self) -> list[tuple[JobState, Priority | None, Path]]:
        out: list[tuple[JobState, Priority | None, Path]] = [
            (JobState.QUEUED, Priority(p), self.layout.queued(p)) for p in PRIORITIES
        ]
        out += [
            (JobState.ACTIVE, None, self.layout.active),
            (JobState.DONE, None, self.layout.done),
            (JobState.FAILED, None, self.layout.failed),
        ]
        return out

    def _exists_anywhere(self, job_id: str) -> bool:
        return (self.layout.incoming / job_id).exists() or any(
            (d / job_id).exists() for _s, _p, d in self._all_state_dirs()
        )

    def new_job_id(self, name: str, now: float | None = None) -> str:
        """Sortable by arrival (microsecond clock) and unique across every state folder."""
        us = int((now if now is not None else time.time()) * 1_000_000)
        us = max(us, self._last_id_us + 1)
        while True:
            t, frac = divmod(us, 1_000_000)
            job_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(t))}-{frac:06d}-{_slug(name)}"
            if not self._exists_anywhere(job_id):
                self._last_id_us = us
                return job_id
            us += 1

    @contextlib.contextmanager
    def _staging(self, job_id: str, create: bool = True) -> Iterator[Path]:
        """A private folder jobs/.incoming/<id>, flocked for as long as we work in it.

        Lock-then-verify: whoever recovers abandoned staging folders takes the same lock,
        so a folder that exists and is locked is somebody's work in progress.
        """
        d = self.layout.incoming / job_id
        if create:
            d.mkdir(parents=True)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield d
        finally:
            os.close(fd)

    def find(self, job_id: str) -> JobRef:
        if not JOB_ID.fullmatch(job_id):
            raise QueueError(f"{job_id[:80]!r} is not a job id (like 20261123T101500-123456-name); "
                             "`trainerd queue list --state all` shows them")
        for state, prio, d in self._all_state_dirs():
            if (d / job_id).is_dir():
                return JobRef(job_id, state, d / job_id, prio)
        raise QueueError(f"no job with id {job_id!r}; `trainerd queue list --state all` shows the ids")

    def list(self, state: JobState | None = None) -> list[JobRef]:
        refs = []
        for st, prio, d in self._all_state_dirs():
            if state is not None and st != state:
                continue
            try:
                names = sorted(os.listdir(d))
            except FileNotFoundError:
                continue
            refs += [JobRef(n, st, d / n, prio) for n in names if not n.startswith(".")]
        return refs

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for st, prio, d in self._all_state_dirs():
            try:
                n = dircache.count(d)  # a stat while the folder is unchanged (10,000 done jobs)
            except OSError:  # reporting must work even when a folder is broken
                n = 0
            key = f"queued_{prio.value}" if prio else st.value
            out[key] = n
        out["queued"] = sum(out[f"queued_{p}"] for p in PRIORITIES)
        return out

    # ----------------------------------------------------------------- intake
    def submit(
        self,
        src: Path,
        priority: Priority = Priority.NORMAL,
        *,
        move: bool = False,
        original_name: str | None = None,
        source_folder: str | None = None,
        now: float | None = None,
    ) -> JobRef:
        """Make a job of `src`: queued if it validates, else failed with the reason.

        `move=True` renames the file in (inbox intake); otherwise it is copied atomically
        and the user's file is left untouched.
        """
        src = Path(src)
        name = original_name or src.name
        job_id = self.new_job_id(name, now)
        with self._staging(job_id) as stage:
            if move:
                try:
                    os.rename(src, stage / DATA)
                except OSError:
                    stage.rmdir()  # nothing was taken: leave no empty staging folder behind
                    raise
            else:
                part = stage / (".data.jsonl" + NOT_DELIVERED_SUFFIXES[0])
                with open(src, "rb") as fin, open(part, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                    fout.flush()
                    os.fsync(fout.fileno())
                os.rename(part, stage / DATA)
            if self._sync:
                atomic.fsync_dir(stage)
            elif self._barrier is not None:
                self._barrier.folder(src.parent)  # the name left the inbox
            return self._finish_staged(stage, job_id, name, priority, source_folder)

    def _finish_staged(
        self, stage: Path, job_id: str, name: str, priority: Priority, source_folder: str | None
    ) -> JobRef:
        report, sha, size = _hash_and_validate(stage / DATA, name, self.data_map)
        meta = JobMeta(
            id=job_id, original_name=name, source_folder=source_folder, sha256=sha, size=size,
            examples=report.examples, priority=priority, seed=int(sha[:8], 16),
        )
        save_meta(stage, meta, sync=self._sync)
        if report.ok:
            dest = self.layout.queued(priority.value) / job_id
            atomic.rename(stage, dest, sync=self._sync)
            self._to_barrier(dest)
            self._event("queued", job_id, name=name, priority=priority.value, examples=report.examples)
            return JobRef(job_id, JobState.QUEUED, dest, priority)
        atomic.write_json(stage / ERROR_JSON, {
            "reason": f"{name}: {report.reason()}",
            "stage": "validation",
            "errors": [{"line": e.line, "reason": e.reason} for e in report.errors],
            "error_count": report.error_count,
            "at": time.time(),
        }, sync=self._sync)
        dest = self.layout.failed / job_id
        atomic.rename(stage, dest, sync=self._sync)
        self._to_barrier(dest)
        self._event("rejected", job_id, name=name, reason=report.reason())
        return JobRef(job_id, JobState.FAILED, dest)

    def _to_barrier(self, job: Path) -> None:
        """An unsynced intake of `job` (now in its state folder): what its slice's barrier
        must make durable. Its staging folder's removal from jobs/.incoming too."""
        if self._barrier is None or self._sync:
            return
        for n in (DATA, JOB_JSON, ERROR_JSON):
            if (job / n).is_file() and not (job / n).is_symlink():
                self._barrier.file(job / n)
        for d in (job, job.parent, self.layout.incoming):
            self._barrier.folder(d)

    def _reject_entry(self, path: Path, reason: str, source_folder: str | None) -> JobRef | None:
        """Move a bad inbox entry (not followed, not read) into failed/ with the reason."""
        job_id = self.new_job_id(path.name)
        try:
            with self._staging(job_id) as stage:
                os.rename(path, stage / ORIGINAL)
                save_meta(stage, JobMeta(id=job_id, original_name=path.name, source_folder=source_folder,
                                         sha256="", size=0, examples=0), sync=self._sync)
                atomic.write_json(stage / ERROR_JSON, {
                    "reason": f"{printable(path.name)}: {reason}", "stage": "intake", "at": time.time(),
                }, sync=self._sync)
                atomic.rename(stage, self.layout.failed / job_id, sync=self._sync)
                if self._barrier is not None and not self._sync:
                    self._barrier.folder(path.parent)
                self._to_barrier(self.layout.failed / job_id)
        except OSError as e:
            with contextlib.suppress(OSError):
                (self.layout.incoming / job_id).rmdir()
            if e.errno in FD_EXHAUSTED:
                raise
            # Cannot move it (e.g. a read-only or foreign inbox): leave a note beside it.
            self._mark_in_place(path, f"{reason} (and it could not be moved to jobs/failed/: {e.strerror})")
            return None
        self.settler.forget(path)
        self._event("rejected", job_id, name=path.name, reason=reason)
        log.warning("rejected inbox entry %s: %s", printable(str(path)), reason)
        return JobRef(job_id, JobState.FAILED, self.layout.failed / job_id)

    def _mark_in_place(self, path: Path, reason: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key in self._rejected_in_place:
            return
        self._rejected_in_place.add(key)
        log.warning("rejected inbox entry %s in place: %s", printable(str(path)), reason)
        with contextlib.suppress(OSError):
            atomic.write_json(note_path(path), {"reason": reason, "name": printable(path.name),
                                                "size": st.st_size, "mtime_ns": st.st_mtime_ns})

    def _scan(self, skipped: list[Skipped] | None = None) -> list[Entry]:
        def unreadable(d: Path, e: OSError) -> None:
            if e.errno in FD_EXHAUSTED:
                raise e
            self._mark_in_place(d, f"cannot list this folder: {e.strerror or e}; "
                                "fix its permissions so trainerd can read it")
        return scan(self.layout.inbox, unreadable, skipped)

    def ingest(self, budget_seconds: float | None = None) -> Intake:
        """Take every delivered, settled inbox entry (or as many as fit in the time budget;
        `.more` then says to call again). Never raises for one bad entry; when the process
        runs out of file descriptors, stops and says so in `blocked` (nothing is rejected)."""
        deadline = time.monotonic() + budget_seconds if budget_seconds else None
        taken = Intake()
        said: list[tuple[str, JobRef]] = []
        retried: list[str] = []
        self._sync = False
        self._barrier = atomic.Barrier()
        try:
            retried = self._retry_abandoned()
            entries = self._scan()
            self.settler.keep_only({str(e.path) for e in entries})
            for i, entry in enumerate(entries):
                if i and deadline is not None and time.monotonic() > deadline:  # always progress
                    taken.more = True
                    break
                try:
                    ref = self._ingest_one(entry)
                except FileNotFoundError:
                    continue  # vanished between scan and intake (the user took it back)
                except OSError as e:
                    if e.errno in FD_EXHAUSTED:
                        raise
                    self._mark_in_place(entry.path, f"cannot take it in: {e.strerror or e}")
                    continue
                if ref is not None:
                    taken.append(ref)
                    said.append((printable(str(entry.path.relative_to(self.layout.inbox))), ref))
            self.blocked = None
        except OSError as e:
            if e.errno not in FD_EXHAUSTED:
                raise
            self._fd_exhausted(e)
            taken.more = False  # retried at the next tick, after the descriptors are back
        finally:
            self._sync = True
            barrier, self._barrier = self._barrier, None
            try:
                barrier.flush()  # raises if the disk refused: then nothing below is said
            except OSError as e:
                if e.errno not in FD_EXHAUSTED:
                    raise
                os.sync()  # no descriptor needed; then say it (fsyncs of FUSE/NFS need descriptors)
                self._fd_exhausted(e)
        for note in retried:
            log.warning("intake retry: %s", note)
        for name, ref in said:
            # A rejected file is a data error: WARNING (someone should fix the file), never ERROR.
            log.log(logging.INFO if ref.state == JobState.QUEUED else logging.WARNING, "%s: %s as %s",
                    name, "queued" if ref.state == JobState.QUEUED else "rejected", ref.id)
        return taken

    def _fd_exhausted(self, e: OSError) -> None:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        why = (f"intake paused: out of file descriptors ({e.strerror}; limit {soft}, ulimit -n). "
               "trainerd retries by itself; raise the limit (LimitNOFILE= in the systemd unit) if it persists")
        if why != self.blocked:
            log.error("%s", why)
        self.blocked = why

    def _retry_abandoned(self) -> list[str]:
        """Finish intakes an error cut short in this process's lifetime, e.g. a full disk
        while job.json was written: the data is already in jobs/.incoming/<id> and the inbox
        entry is gone, so without this it would wait there for the next daemon start.
        Returns the notes to log once the slice's barrier made them true.

        Only non-empty, unlocked folders: a CLI edit or copy holds the folder's flock from
        before anything is put in it until it is renamed out (see _staging, _restage)."""
        if time.monotonic() < self._retry_at:
            return []
        self._retry_at = time.monotonic() + STAGING_RETRY_SECONDS
        try:
            dirs = sorted(d for d in self.layout.incoming.iterdir() if d.is_dir() and any(d.iterdir()))
        except OSError:
            return []
        out: list[str] = []
        for d in dirs:
            try:
                notes = self._recover_staging(d)
            except OSError as e:  # still no room (or still broken): try again later
                if d.name not in self._retry_noted:
                    self._retry_noted.add(d.name)
                    log.warning("%s: intake not finished yet (%s); retrying every %.0fs",
                                d.name, e.strerror or e, STAGING_RETRY_SECONDS)
                continue
            out += [n for n in notes if n not in self._retry_noted]
            self._retry_noted.update(notes)
        return out

    def _told_in_place(self, path: Path, st: os.stat_result) -> bool:
        """Rejected in place already: the user fixes it by replacing the file."""
        return (str(path), st.st_size, st.st_mtime_ns) in self._rejected_in_place or \
            note_path(path).exists()

    def pending_inbox(self) -> int:
        """Inbox entries not yet taken in (e.g. still settling), excluding rejected ones."""
        n = 0
        for entry in self._scan():
            with contextlib.suppress(OSError):
                if not self._told_in_place(entry.path, os.lstat(entry.path)):
                    n += 1
        return n

    def inbox_report(self, limit: int = 20) -> dict[str, Any]:
        """What the inbox holds that is not taken in yet, and why, for `status`: entries
        settling (with how long this process has seen them unchanged), entries ignored by
        the Maildir rules, entries rejected in place. At most `limit` of each are named."""
        ignored: list[Skipped] = []
        waiting: list[Skipped] = []
        for entry in self._scan(ignored):
            try:
                st = os.lstat(entry.path)
            except OSError:
                continue
            name = printable(str(entry.path.relative_to(self.layout.inbox)))
            if self._told_in_place(entry.path, st):
                ignored.append(Skipped(name, "rejected in place (see its .rejected.json note); replace it to retry"))
                continue
            seen = self.settler.peek(entry.path, st)
            waiting.append(Skipped(name, f"settling: unchanged for {seen:.1f} s of the "
                                   f"queue.settle_seconds = {self.cfg.settle_seconds:g} it needs"
                                   if seen is not None else "waiting for the daemon to look at it"))
        return {"waiting": [vars(x) for x in waiting[:limit]], "waiting_count": len(waiting),
                "ignored": [vars(x) for x in ignored[:limit]], "ignored_count": len(ignored),
                "blocked": self.blocked}

    def _ingest_one(self, entry: Entry) -> JobRef | None:
        path, folder = entry.path, entry.folder
        st = os.lstat(path)
        if self._told_in_place(path, st):
            return None
        if stat.S_ISLNK(st.st_mode):
            return self._reject_entry(path, "a symlink; trainerd does not follow links in the inbox. "
                                      "Copy the file in, or deliver it with `trainerd queue add`", folder)
        if entry.too_deep:
            return self._reject_entry(path, TOO_DEEP, folder)
        if stat.S_ISDIR(st.st_mode):
            return self._reject_entry(path, "a folder named like a data file; put .jsonl files in it instead", folder)
        if not stat.S_ISREG(st.st_mode):
            return self._reject_entry(path, "not a regular file (FIFO, socket or device)", folder)
        if self.settler.waited(path, st) < self.cfg.settle_seconds:
            return None  # still being written, or just delivered: wait for it to settle
        bad_name = validate.name_error(path.name)
        if bad_name:
            return self._reject_entry(path, bad_name, folder)
        if st.st_size > self.cfg.max_file_mb * 1024 * 1024:
            return self._reject_entry(
                path, f"{st.st_size / 2**20:.0f} MB is over queue.max_file_mb = {self.cfg.max_file_mb:g}; "
                "split the file or raise the limit", folder)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            os.close(fd)
        except PermissionError:
            return self._reject_entry(path, "permission denied: trainerd cannot read it; "
                                      "fix its permissions and drop it again", folder)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return self._reject_entry(path, "a symlink; not followed", folder)
            raise
        # The id's time is the arrival here, not the file's mtime, which cp -p, rsync and tar
        # preserve (a file from 1970 must not jump the queue). Scan order is oldest first.
        ref = self.submit(path, entry.priority, move=True, original_name=path.name, source_folder=folder)
        self.settler.forget(path)
        return ref  # said (logged) by ingest once its barrier made it durable

    # ----------------------------------------------------------------- daemon transitions
    def claim(self, now: float | None = None) -> JobRef | None:
        """The job to run next: one left active by a crash first, then high, normal, low,
        FIFO by arrival within each, skipping those still in back-off."""
        now = time.time() if now is None else now
        active = self.list(JobState.ACTIVE)
        if active:
            return active[0]
        for prio in PRIORITIES:
            for ref in self.list(JobState.QUEUED):
                if ref.priority != Priority(prio):
                    continue
                try:
                    if ref.meta().not_before > now:
                        continue
                    dest = self.layout.active / ref.id
                    atomic.rename(ref.path, dest)
                except FileNotFoundError:
                    continue  # moved or removed by the CLI a moment ago
                self._event("claimed", ref.id, priority=prio)
                return JobRef(ref.id, JobState.ACTIVE, dest)
        return None

    def next_wakeup(self) -> float | None:
        """Earliest time a backed-off queued job becomes claimable (None if nothing waits)."""
        times = []
        for ref in self.list(JobState.QUEUED):
            with contextlib.suppress(Exception):
                times.append(ref.meta().not_before)
        return min(times) if times else None

    def finish(self, ref: JobRef) -> JobRef:
        dest = self.layout.done / ref.id
        atomic.rename(ref.path, dest)
        self._event("done", ref.id)
        return JobRef(ref.id, JobState.DONE, dest)

    def fail(self, ref: JobRef, reason: str, **detail: Any) -> JobRef:
        atomic.write_json(ref.path / ERROR_JSON, {"reason": reason, "at": time.time(), **detail})
        dest = self.layout.failed / ref.id
        atomic.rename(ref.path, dest)
        self._event("failed", ref.id, reason=reason)
        return JobRef(ref.id, JobState.FAILED, dest)

    def release(self, ref: JobRef, not_before: float = 0.0) -> JobRef:
        """Active -> queued (a retry after back-off), into the folder it was claimed from."""
        meta = ref.meta()
        prio = meta.attempts[-1].priority if meta.attempts and meta.attempts[-1].priority else meta.priority
        meta.not_before = not_before
        save_meta(ref.path, meta)
        dest = self.layout.queued(Priority(prio).value) / ref.id
        atomic.rename(ref.path, dest)
        self._event("retry_scheduled", ref.id, not_before=not_before)
        return JobRef(ref.id, JobState.QUEUED, dest, Priority(prio))

    def record_attempt_end(self, ref: JobRef, outcome: Outcome, exit_code: int | None,
                           error: str | None) -> JobMeta:
        meta = ref.meta()
        if meta.attempts and meta.attempts[-1].ended_at is None:
            a = meta.attempts[-1]
            a.ended_at, a.outcome, a.exit_code, a.error = time.time(), outcome, exit_code, error
        save_meta(ref.path, meta)
        self._event("attempt_end", ref.id, outcome=outcome.value, exit_code=exit_code, error=error)
        return meta

    def record_attempt_start(self, ref: JobRef, pid: int | None, priority: Priority) -> JobMeta:
        meta = ref.meta()
        meta.attempts.append(Attempt(number=len(meta.attempts) + 1, started_at=time.time(),
                                     pid=pid, priority=priority))
        save_meta(ref.path, meta)
        self._event("attempt_start", ref.id, number=len(meta.attempts), pid=pid)
        return meta

    def record_worker_pid(self, ref: JobRef, pid: int) -> None:
        """The live attempt's worker pid, for people (`trainerd status`, job.json)."""
        meta = ref.meta()
        if meta.attempts:
            meta.attempts[-1].pid = pid
            save_meta(ref.path, meta)

    def amend(self, ref: JobRef, changes: dict[str, Any], note: dict[str, Any] | None = None) -> JobMeta:
        """Set what the attempt policy changes (trainerd.attempts: the OOM fallback's
        micro-batch, the divergence count) and add its note to the job's history."""
        unknown = set(changes) - AMENDABLE
        if unknown:
            raise ValueError(f"job.json fields {sorted(unknown)} are not the attempt policy's to change")
        meta = ref.meta()
        for k, v in changes.items():
            setattr(meta, k, v)
        if note:
            meta.history.append({"at": time.time(), **note})
        save_meta(ref.path, meta)
        return meta

    def record_progress(self, ref: JobRef, progress: dict[str, Any] | None, counts: dict[str, int] | None,
                        curve: list[float]) -> JobMeta:
        """What an attempt got through (the worker's progress.json), what the token cache
        holds (train.overlength's counts) and the run's first and last loss, in one write."""
        meta = ref.meta()
        if progress:
            meta.examples_done = int(progress.get("examples_done", meta.examples_done))
            meta.steps_done = int(progress.get("step", meta.steps_done))
        if counts:
            meta.sequences, meta.tokens = counts["sequences"], counts["tokens"]
            meta.dropped, meta.truncated = counts["dropped"], counts["truncated"]
        if curve:
            meta.first_loss, meta.last_loss = curve[0], curve[-1]
        save_meta(ref.path, meta)
        return meta

    def record_version(self, ref: JobRef, version: str, gate: dict[str, Any] | None) -> JobMeta:
        """The version the job published and the eval gate's decision (the version's
        manifest holds the original)."""
        meta = ref.meta()
        meta.version, meta.gate = version, gate
        save_meta(ref.path, meta)
        return meta

    def recover(self) -> list[str]:
        """At start-up: finish or undo half-done intakes and rebuild lost job.json files.
        Returns what it did, for the log. Attempts the daemon's death cut short are
        close_interrupted()'s."""
        notes: list[str] = []
        for d in sorted(self.layout.incoming.glob("*")):
            notes += self._recover_staging(d)
        for ref in self.list():
            try:
                ref.meta()
            except (OSError, ValueError):
                notes.append(self._rebuild_meta(ref))
        return notes

    def close_interrupted(self) -> tuple[list[tuple[JobRef, JobMeta]], list[str]]:
        """At start-up, after recover(): the attempts that were running when the daemon died
        get their end (INTERRUPTED). Returns those jobs, for the attempt policy to decide
        on (trainerd.attempts), and notes on the jobs it could not read."""
        closed: list[tuple[JobRef, JobMeta]] = []
        notes: list[str] = []
        for ref in self.list(JobState.ACTIVE):
            try:
                meta = ref.meta()
            except (OSError, ValueError) as e:
                notes.append(f"{ref.id}: job.json unreadable ({e}); left in active/ for inspection")
                continue
            if meta.attempts and meta.attempts[-1].ended_at is None:
                a = meta.attempts[-1]
                a.ended_at, a.outcome = time.time(), Outcome.INTERRUPTED
                a.error = "the daemon stopped while this attempt ran (crash, kill -9 or power loss)"
                save_meta(ref.path, meta)
                self._event("attempt_end", ref.id, outcome=a.outcome.value, error=a.error)
                closed.append((ref, meta))
        return closed, notes

    def _rebuild_meta(self, ref: JobRef) -> str:
        """job.json lost (a crash before intake's filesystem sync): rebuild it from the data,
        which is the part that matters; attempts, if there were any, are not known."""
        if not (ref.path / DATA).is_file():
            return f"{ref.id}: job.json unreadable and no data file; left for inspection"
        report, sha, size = _hash_and_validate(ref.path / DATA, "", self.data_map)  # any layout
        ext = ".json" if report.unit == "element" else ".jsonl"  # the name decides how it is read
        save_meta(ref.path, JobMeta(
            id=ref.id, original_name=ref.id.split("-", 2)[-1] + ext, sha256=sha, size=size,
            examples=report.examples, priority=ref.priority or Priority.NORMAL, seed=int(sha[:8], 16),
            history=[{"at": time.time(), "event": "job.json rebuilt at recovery"}]))
        return f"{ref.id}: job.json was lost in a crash; rebuilt from its data"

    def _recover_staging(self, d: Path) -> list[str]:
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return []
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # somebody is working in it right now
            if not d.exists():
                return []
            job_id = d.name
            if (d / DATA).is_file():
                try:
                    meta = JobMeta.load(d)
                    name, prio, folder = meta.original_name, meta.priority, meta.source_folder
                except (OSError, ValueError):  # not written yet, or lost by a crash before sync
                    name, prio, folder = job_id.split("-", 2)[-1] + ".jsonl", Priority.NORMAL, None
                if (d / ERROR_JSON).is_file():
                    atomic.rename(d, self.layout.failed / job_id)
                    return [f"{job_id}: finished an interrupted rejection"]
                ref = self._finish_staged(d, job_id, name, prio, folder)
                # Said as intake says it: the acknowledgement of a file a cut interrupted.
                said = "queued" if ref.state == JobState.QUEUED else "rejected"
                return [f"{name}: {said} as {job_id} (finished an interrupted intake)"]
            if (d / ORIGINAL).exists() or os.path.lexists(d / ORIGINAL):
                self._complete_rejection_record(d)
                atomic.rename(d, self.layout.failed / job_id)
                return [f"{job_id}: finished an interrupted rejection"]
            leftovers = [p.name for p in d.iterdir()]
            if all(_not_delivered(n) for n in leftovers):
                # An interrupted copy by `queue add`: the user's original was never touched.
                # Or an intake's temp job.json alone: a disk that kept the folder and that
                # file but not the data's rename (it needs the folder's fsync) left the data
                # in the inbox, to be taken in again (the power campaign, issue 20).
                shutil.rmtree(d)
                return [f"{job_id}: removed an interrupted copy ({', '.join(leftovers) or 'empty'}); "
                        "the source file was not modified"]
            return [f"{job_id}: unexpected files {leftovers} in jobs/.incoming/; left for inspection"]
        finally:
            os.close(fd)

    def _complete_rejection_record(self, d: Path) -> None:
        """A rejection cut short (crash, full disk) before its job.json or error.json: a
        failed/ entry must still say what it is and why it was refused."""
        name = d.name.split("-", 2)[-1]
        if not (d / JOB_JSON).is_file():
            save_meta(d, JobMeta(id=d.name, original_name=name, sha256="", size=0, examples=0,
                                 history=[{"at": time.time(), "event": "job.json rebuilt at recovery"}]))
        if not (d / ERROR_JSON).is_file():
            st = os.lstat(d / ORIGINAL)
            kind = ("a symlink (not followed)" if stat.S_ISLNK(st.st_mode) else
                    "a folder" if stat.S_ISDIR(st.st_mode) else
                    "not a regular file" if not stat.S_ISREG(st.st_mode) else "a file that could not be taken in")
            atomic.write_json(d / ERROR_JSON, {
                "reason": f"{name}: {kind}; rejected at intake (the detailed reason was lost when the "
                          "rejection was interrupted). Deliver a regular .jsonl file instead",
                "stage": "intake", "at": time.time()})

    # ----------------------------------------------------------------- user operations
    @contextlib.contextmanager
    def _restage(self, ref: JobRef) -> Iterator[Path]:
        """Rename a job into private staging for an edit; FileNotFoundError if the daemon
        claimed it first. If the edit fails, the job goes back where it was."""
        stage = self.layout.incoming / ref.id
        stage.mkdir(parents=True)
        # Lock the empty placeholder first, then rename the job onto it: rename() replaces
        # an empty directory atomically, so nobody ever sees the job unlocked in staging.
        with self._staging(ref.id, create=False) as d:
            try:
                os.rename(ref.path, d)
            except BaseException:
                with contextlib.suppress(OSError):
                    stage.rmdir()
                raise
            try:
                yield d
            except BaseException:
                if d.exists():
                    atomic.rename(d, ref.path)
                raise

    def move(self, job_id: str, priority: Priority) -> JobRef:
        ref = self.find(job_id)
        if ref.state != JobState.QUEUED:
            raise QueueError(f"{job_id} is {ref.state.value}; only queued jobs change priority")
        try:
            with self._restage(ref) as stage:
                meta = JobMeta.load(stage)
                meta.priority = priority
                meta.history.append({"at": time.time(), "event": "priority", "to": priority.value})
                save_meta(stage, meta)
                dest = self.layout.queued(priority.value) / job_id
                atomic.rename(stage, dest)
        except FileNotFoundError:
            raise QueueError(f"{job_id} was claimed by the daemon a moment ago; it is training now") from None
        self._event("moved", job_id, priority=priority.value)
        return JobRef(job_id, JobState.QUEUED, dest, priority)

    def remove(self, job_id: str) -> None:
        ref = self.find(job_id)
        if ref.state == JobState.ACTIVE:
            raise QueueError(f"{job_id} is training right now; use `trainerd skip` to stop it first")
        try:
            with self._restage(ref) as stage:
                shutil.rmtree(stage)
        except FileNotFoundError:
            raise QueueError(f"{job_id} changed state a moment ago; look again with `trainerd queue list`") from None
        self._event("removed", job_id, from_state=ref.state.value)

    def requeue(self, job_id: str, priority: Priority | None = None) -> JobRef:
        ref = self.find(job_id)
        if ref.state not in (JobState.FAILED, JobState.DONE):
            raise QueueError(f"{job_id} is {ref.state.value}; only failed or done jobs can be requeued")
        if not (ref.path / DATA).is_file() or (ref.path / DATA).is_symlink():
            raise QueueError(f"{job_id} has no data file to train (it was rejected at intake); "
                             "deliver a corrected file instead")
        with self._restage(ref) as stage:
            meta = JobMeta.load(stage)
            report, _sha, _size = _hash_and_validate(stage / DATA, meta.original_name, self.data_map)
            prio = priority or meta.priority
            meta.history.append({"at": time.time(), "event": "requeued", "from": ref.state.value,
                                 "previous_attempts": [a.model_dump(mode="json") for a in meta.attempts],
                                 "previous_error": _read_reason(stage)})
            meta.attempts, meta.not_before, meta.priority = [], 0.0, prio
            meta.examples_done = meta.steps_done = 0
            meta.first_loss = meta.last_loss = None
            meta.micro_batch_size, meta.nonfinite_events = None, 0
            meta.examples = report.examples
            if not report.ok:
                raise QueueError(f"{job_id} still does not validate: {report.reason()}")
            save_meta(stage, meta)
            _archive_run(stage)
            dest = self.layout.queued(prio.value) / job_id
            atomic.rename(stage, dest)
        self._event("requeued", job_id, from_state=ref.state.value)
        return JobRef(job_id, JobState.QUEUED, dest, prio)


RUN_FILES = (ERROR_JSON, PROGRESS_JSON, METRICS, WORKER_LOG, WORKER_ERROR)
AMENDABLE = frozenset({"micro_batch_size", "nonfinite_events"})  # Queue.amend's fields


def save_meta(job_dir: Path, meta: JobMeta, sync: bool = True) -> None:
    """Write job.json. The queue is its only writer (issue 17): every change to a job's
    record goes through a Queue method, so no two writers race on the file."""
    atomic.write_json(Path(job_dir) / JOB_JSON, meta.model_dump(mode="json"), sync=sync)


def _not_delivered(name: str) -> bool:
    """A name in a staging folder that holds no user data: a copy not yet complete, or
    one of atomic's temp files."""
    return name.startswith(".") and (name.endswith(NOT_DELIVERED_SUFFIXES) or name.startswith(atomic.TMP_PREFIX))


def _archive_run(job_dir: Path) -> None:
    """Keep a previous run's record under history/<time>/ so the new run starts clean."""
    present = [n for n in RUN_FILES if (job_dir / n).exists()]
    if not present:
        return
    dest = job_dir / "history" / time.strftime("%Y%m%dT%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for n in present:
        os.rename(job_dir / n, dest / n)


def _read_reason(job_dir: Path) -> str | None:
    try:
        return atomic.read_json(job_dir / ERROR_JSON).get("reason")
    except (OSError, ValueError):
        return None
