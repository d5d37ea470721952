"""Start-up recovery of what a crash or power cut left half-done: intakes in jobs/.incoming/
finished or undone, lost job.json files rebuilt from their data, cut-short rejections
completed. The attempts a crash interrupted are Transitions.close_interrupted's."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import time
from pathlib import Path

from trainerd import atomic
from trainerd.inbox import NOT_DELIVERED_SUFFIXES
from trainerd.jobs import DATA, ERROR_JSON, JOB_JSON, JobMeta, JobState, Priority
from trainerd.queue import record
from trainerd.queue.intake import ORIGINAL, Intaking, _hash_and_validate
from trainerd.queue.record import JobRef

log = logging.getLogger("trainerd.queue")
# How often ingest looks for intakes abandoned by an error (e.g. a full disk) to finish them.
STAGING_RETRY_SECONDS = 5.0


class Recovery(Intaking):
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

    def _rebuild_meta(self, ref: JobRef) -> str:
        """job.json lost (a crash before intake's filesystem sync): rebuild it from the data,
        which is the part that matters; attempts, if there were any, are not known."""
        if not (ref.path / DATA).is_file():
            return f"{ref.id}: job.json unreadable and no data file; left for inspection"
        report, sha, size = _hash_and_validate(ref.path / DATA, "", self.data_map)  # any layout
        ext = ".json" if report.unit == "element" else ".jsonl"  # the name decides how it is read
        record.save_meta(ref.path, JobMeta(
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
            record.save_meta(d, JobMeta(id=d.name, original_name=name, sha256="", size=0, examples=0,
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


def _not_delivered(name: str) -> bool:
    """A name in a staging folder that holds no user data: a copy not yet complete, or
    one of atomic's temp files."""
    return name.startswith(".") and (name.endswith(NOT_DELIVERED_SUFFIXES) or name.startswith(atomic.TMP_PREFIX))
