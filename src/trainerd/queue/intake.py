"""Intake: files become jobs. Inbox entries are taken in once settled (Maildir rules,
trainerd.inbox), each validated and hashed in one pass; a bad entry is rejected into
failed/ with its reason (or in place, with a note, when it cannot be moved). `queue add`
and the web upload use submit(), the one intake path."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from trainerd import atomic, validate
from trainerd.config import DataMapConfig
from trainerd.formats import NO_MAP
from trainerd.inbox import NOT_DELIVERED_SUFFIXES, TOO_DEEP, Entry, Skipped, note_path, scan
from trainerd.jobs import DATA, ERROR_JSON, JOB_JSON, JobMeta, JobState, Priority
from trainerd.names import printable
from trainerd.queue import record
from trainerd.queue.listing import QueueBase
from trainerd.queue.record import FD_EXHAUSTED, JobRef

log = logging.getLogger("trainerd.queue")


ORIGINAL = "original"  # a rejected non-file inbox entry (symlink, FIFO, folder) is kept under this name


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


class Intaking(QueueBase):
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
        record.save_meta(stage, meta, sync=self._sync)
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
                record.save_meta(stage, JobMeta(id=job_id, original_name=path.name, source_folder=source_folder,
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
        """Recovery's (trainerd.queue.recovery): intakes an error cut short, finished."""
        raise NotImplementedError

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
