"""`python -m trainerd.worker JOB_DIR [--base-dir BASE]`: one attempt of one job.

The exit status is the whole report (trainerd.jobs.ExitCode); worker-error.json adds the
reason a person reads. SIGTERM/SIGINT ask for a warm stop: finish the optimizer step,
checkpoint, exit STOPPED. The worker dies with its supervisor (PR_SET_PDEATHSIG), so an
orphan can never train on beside a restarted daemon.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from trainerd import atomic
from trainerd.jobs import (
    GROUP_LOCKED_ENV,
    PARENT_ENV,
    WORKER_ERROR,
    WORKER_LOCK,
    WORKER_OUTCOME,
    ExitCode,
)
from trainerd.lock import flock_within
from trainerd.paths import Layout
from trainerd.worker import heartbeat, timing

if TYPE_CHECKING:
    from trainerd.worker.warm import Carry

log = logging.getLogger("trainerd.worker")

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """SIGKILL us when our parent dies. If it died before this call (the window while this
    process started), the kernel will never send it: then exit now, as it would have."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        return  # not Linux: the supervisor's recovery still handles orphans by the job lock
    expected = os.environ.get(PARENT_ENV, "")
    if expected.isdigit() and os.getppid() != int(expected):
        os._exit(1)  # orphaned while starting: nobody waits for this process any more


def _lock_job(job_dir: Path, timeout: float = 60.0) -> int:
    """One worker per job dir, even if an orphan from a killed daemon is still exiting."""
    fd = flock_within(job_dir / WORKER_LOCK, timeout, interval=0.5)
    if fd is None:
        raise RuntimeError(f"another worker still holds {job_dir / WORKER_LOCK}")
    return fd


def _report(job_dir: Path, kind: str, message: str, tb: str | None = None) -> None:
    try:
        atomic.write_json(job_dir / WORKER_ERROR, {"kind": kind, "message": message,
                                                   "traceback": tb, "at": time.time()})
    except OSError:
        pass


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    try:
        import torch

        return isinstance(e, torch.cuda.OutOfMemoryError)
    except Exception:
        return False


class StopFlag:
    """Set from a signal handler; read at every optimizer-step boundary."""

    def __init__(self) -> None:
        self._ev = threading.Event()
        self.reason = ""

    def set(self, reason: str = "") -> None:
        self.reason = self.reason or reason
        self._ev.set()

    def __bool__(self) -> bool:
        return self._ev.is_set()


def main(argv: list[str] | None = None) -> int:
    # Handlers first, before any slow import: a stop request that arrives while the worker
    # starts must become a flag, not Python's default death by SIGTERM.
    stop = StopFlag()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set(signal.Signals(signum).name)  # a flag only; the step boundary acts on it

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _die_with_parent()

    ap = argparse.ArgumentParser(prog="python -m trainerd.worker")
    ap.add_argument("job_dir", type=Path)
    ap.add_argument("--base-dir", type=Path, default=None)
    ap.add_argument("--warm", type=int, default=1, metavar="N",
                    help="train up to N jobs in this process, the next ones handed over on stdin "
                         "(trainerd.worker.warm; the daemon's train.warm_jobs)")
    args = ap.parse_args(argv)
    job_dir = args.job_dir.resolve()
    layout = Layout.at(args.base_dir or job_dir.parents[2])

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_library_warnings()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    heartbeat.start(job_dir)  # before torch is imported: that is part of loading too
    timing.begin()  # the interpreter's start is the daemon's side: attempt start -> this
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        if args.warm > 1:
            from trainerd.worker import warm

            return warm.serve(job_dir, args.warm, lambda d, carry: _attempt(d, layout, stop, carry),
                              lambda: bool(stop))
        code = _attempt(job_dir, layout, stop)
        timing.write(job_dir, exit=code)
        return code
    code = _attempt(job_dir, layout, stop)
    # A rank of a torchrun group: torchrun's exit status cannot carry ours (any failing
    # rank makes it 1), so rank 0 says it in a file. By the time a rank returns, the
    # group's shared work is done (a checkpoint is committed behind a barrier), so
    # torchrun may stop the other ranks as soon as one exits non-zero.
    if int(os.environ.get("RANK", "0")) == 0:
        atomic.write_json(job_dir / WORKER_OUTCOME, {"exit": code, "at": time.time()})
    return code


def _freeze_import_heap() -> None:
    """Move what the imports made (modules, classes: never garbage) out of the collector's
    sight, once per process. accelerate runs a full gc.collect() after every training run;
    over torch's and transformers' import heap that took 0.9 s of each job's time
    (bench/per_job.py). Later objects -- a job's model, Trainer, batches -- are collected
    as before; a warm worker's next job must not freeze the last one's garbage, hence once."""
    import gc

    global _heap_frozen
    if not _heap_frozen:
        # What run_job would import on its way (Trainer's stack is most of it), imported
        # now so that it is frozen too.
        import peft  # noqa: F401
        from transformers import Trainer, TrainingArguments  # noqa: F401

        from trainerd.worker import evals, lineboard, recall  # noqa: F401

        gc.freeze()
        _heap_frozen = True


_heap_frozen = False


def quiet_library_warnings() -> None:
    """Libraries' FutureWarnings (a deprecated argument name inside transformers, say) say
    nothing to the person reading worker.log and drown what does (trainerd raises none).
    Set once, here, before any library is imported: every rank of a group runs this too."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)


def _attempt(job_dir: Path, layout: Layout, stop: StopFlag, carry: Carry | None = None) -> int:
    """One attempt of one job. `carry`: a warm worker's (trainerd.worker.warm), which then
    lets go of the job's lock when the job finished, to move on to the next."""
    lock = None
    try:
        if not os.environ.get(GROUP_LOCKED_ENV):  # a torchrun group's launcher holds it
            lock = _lock_job(job_dir)
        from trainerd.worker.data import DataError
        from trainerd.worker.errors import DiskLow, NonFiniteLoss
        from trainerd.worker.preflight import ModelUnavailable
        from trainerd.worker.train import run_job

        _freeze_import_heap()
        timing.mark("imports")  # torch, transformers, peft

        try:
            code = int(run_job(job_dir, layout, stop, carry))
            if carry is not None and lock is not None and code == ExitCode.FINISHED:
                os.close(lock)  # a failed attempt keeps it until the process is gone
            return code
        except ModelUnavailable as e:  # not the job's fault: the daemon pauses, no attempt burnt
            log.error("model unavailable: %s", e)
            _report(job_dir, "model_unavailable", str(e))
            return int(ExitCode.MODEL_UNAVAILABLE)
        except DataError as e:
            log.warning("data error: %s", e)  # the file's fault, not trainerd's: not an ERROR
            _report(job_dir, "data_error", str(e))
            return int(ExitCode.DATA_ERROR)
        except NonFiniteLoss as e:
            log.error("%s", e)
            _report(job_dir, "nonfinite", str(e))
            return int(ExitCode.NONFINITE)
        except DiskLow as e:
            log.error("%s", e)
            _report(job_dir, "disk_low", str(e))
            return int(ExitCode.DISK_LOW)
    except Exception as e:
        # Out of space mid-write (any library's way of saying so) is DISK_LOW: whatever was
        # half-written stays under a temp name and is discarded on the next start, and the
        # daemon pauses itself until space returns.
        return _crash(job_dir, e, layout)


def _disk_full(e: BaseException) -> bool:
    """ENOSPC anywhere in the chain, or in a library's own wording (safetensors raises
    SafetensorError "... No space left on device (os error 28)", not an OSError)."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen) or "os error 28" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _failed_on_a_low_disk(e: BaseException, job_dir: Path, layout: Layout) -> str | None:
    """The daemon's own disk reading, when an error that may be a write's met a job dir below
    its pause threshold: torch.save says a full disk with no errno and no words for it
    (RuntimeError "[enforce fail at inline_container.cc] unexpected pos ...", from "basic_ios::
    clear: iostream error": Trainer's optimizer.pt at a checkpoint, disk campaign seed 1213).
    Below that threshold the daemon pauses anyway; the attempt must not count as a crash."""
    if not isinstance(e, (OSError, RuntimeError)) or _is_oom(e):
        return None
    from trainerd import guards
    from trainerd.config import DiskConfig, load_config

    try:
        disk = load_config(layout.config).disk
    except Exception:  # the attempt is failing already; the defaults still say what is low
        disk = DiskConfig()
    try:
        r = guards.reading(job_dir, disk)
    except OSError:
        return None
    return r.message() if r.low else None


def _crash(job_dir: Path, e: BaseException, layout: Layout | None = None) -> int:
    low = "" if _disk_full(e) else _failed_on_a_low_disk(e, job_dir, layout) if layout else None
    if low is not None:  # a full disk is a pause, not a failed attempt
        why = f"the disk filled up while writing: {e}" + (f" ({low})" if low else "")
        log.error("disk full: %s", why)
        _report(job_dir, "disk_low", why)
        return int(ExitCode.DISK_LOW)
    tb = traceback.format_exc()
    log.error("worker failed:\n%s", tb)
    if _is_oom(e):
        _report(job_dir, "resource_error", f"out of memory: {e}", tb)
        return int(ExitCode.RESOURCE_ERROR)
    _report(job_dir, "crash", f"{type(e).__name__}: {e}", tb)
    return 1
