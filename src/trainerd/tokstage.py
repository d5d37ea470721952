"""When the tokenizing stage runs, and what the daemon does with its verdicts.

While a worker trains, or the user has paused the daemon, queued jobs are tokenized by a
child process (`python -m trainerd.worker.tokenize`, which imports transformers; this
module does not):
token lengths are then known soon after intake, an over-length or unrenderable file goes
to failed/ with its lines before its turn comes, and the worker finds its token cache
ready. When the GPU is free the stage gives way: the daemon stops it before it claims the
next job (the worker of a job whose cache is not ready tokenizes it itself, with the same
code), so the stage never delays training.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys

from trainerd import atomic
from trainerd.jobs import TOKEN_CACHE, TOKEN_ERROR, JobState, child_env
from trainerd.paths import Layout
from trainerd.queue import JobRef, Queue

log = logging.getLogger("trainerd.tokstage")

BATCH = 16  # jobs per stage process: one tokenizer load for many small files
MAX_TRIES = 2
LOG = "tokenize.log"


class TokenStage:
    def __init__(self, layout: Layout, queue: Queue):
        self.layout = layout
        self.queue = queue
        self.proc: subprocess.Popen | None = None
        self.jobs: list[str] = []
        # How often each job was handed to a stage in this daemon run: a stage stopped for a
        # claim leaves jobs undone (handed again), but a job that crashes it is not retried
        # forever (its worker tokenizes it, and fails it with the reason if it must).
        self.tried: dict[str, int] = {}

    def tick(self, training: bool) -> None:
        """Collect a finished stage; start one while `training` (the GPU is not free for the
        next job: a worker trains, or the user paused) and jobs wait."""
        if self.proc is not None and self.proc.poll() is not None:
            self._collect()
        if self.proc is None and training:
            self._start()

    def stop(self) -> None:
        """Before a claim and at shutdown: the stage must not hold the CPU, or a job dir."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._collect()

    def _waiting(self) -> list[JobRef]:
        """Queued jobs without a token cache, in the order they will be claimed."""
        out = []
        for ref in self.queue.list(JobState.QUEUED):
            if self.tried.get(ref.id, 0) >= MAX_TRIES or (ref.path / TOKEN_CACHE / atomic.MANIFEST).exists():
                continue
            out.append(ref)
        order = {"high": 0, "normal": 1, "low": 2}
        return sorted(out, key=lambda r: (order.get(r.priority.value if r.priority else "normal", 1), r.id))

    def _start(self) -> None:
        refs = self._waiting()[:BATCH]
        if not refs:
            return
        self.jobs = [r.id for r in refs]
        for job_id in self.jobs:
            self.tried[job_id] = self.tried.get(job_id, 0) + 1
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        with open(self.layout.logs / LOG, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trainerd.worker.tokenize", "--base-dir", str(self.layout.base),
                 *(str(r.path) for r in refs)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=child_env(),
                start_new_session=True)
        log.info("tokenizing %d queued job(s) while training: %s", len(refs), ", ".join(self.jobs))

    def _collect(self) -> None:
        """Jobs the stage found untrainable go to failed/ with its reason."""
        self.proc = None
        for job_id in self.jobs:
            with contextlib.suppress(Exception):
                ref = self.queue.find(job_id)
                if ref.state != JobState.QUEUED or not (ref.path / TOKEN_ERROR).is_file():
                    continue
                reason = atomic.read_json(ref.path / TOKEN_ERROR).get("reason", "cannot be tokenized")
                name = ref.meta().original_name
                self.queue.fail(ref, f"{name}: {reason}", stage="tokenizing")
                log.warning("%s (%s) failed at tokenizing: %s", job_id, name, reason)
        self.jobs = []

