"""Naming a job on the command line: its full id, a unique prefix of it, or the file name
it arrived as. What `queue list` prints is always accepted back by show/move/remove."""

from __future__ import annotations

import os

from trainerd.queue import JOB_ID, Queue, QueueError


def resolve(q: Queue, text: str) -> str:
    """The job id `text` names. Tried in order: an exact id, a unique id prefix, a unique
    original file name (several jobs may share one: then their ids are listed)."""
    if JOB_ID.fullmatch(text) and _exists(q, text):
        return text
    ids = [r.id for r in q.list()]  # folder listings only: no job.json is read for a prefix
    by_prefix = [i for i in ids if i.startswith(text)] if text else []
    if len(by_prefix) == 1:
        return by_prefix[0]
    if len(by_prefix) > 1:
        raise QueueError(f"{text!r} is the start of {len(by_prefix)} job ids ({', '.join(by_prefix[:5])}"
                         f"{', ...' if len(by_prefix) > 5 else ''}); give more of the id")
    named = []
    for ref in q.list():
        # The id ends with the file's stem: only those candidates' job.json are read.
        stem = os.path.splitext(os.path.basename(text))[0]
        if stem and stem[:20] in ref.id.split("-", 2)[-1]:
            try:
                if ref.meta().original_name == text:
                    named.append(ref.id)
            except (OSError, ValueError):
                continue
    if len(named) == 1:
        return named[0]
    if named:
        raise QueueError(f"{len(named)} jobs came from a file named {text!r}: {', '.join(named)}; "
                         "name one by its id")
    raise QueueError(f"no job with id, id prefix or file name {text!r}; "
                     "`trainerd queue list --state all` shows them")


def _exists(q: Queue, job_id: str) -> bool:
    try:
        q.find(job_id)
    except QueueError:
        return False
    return True
