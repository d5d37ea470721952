"""Trainer callbacks that steer one attempt at optimizer-step boundaries: stop with a
checkpoint, save every T minutes, the host-memory ceiling and disk guard (Control); commit a
checkpoint atomically (Commit); progress.json for status (Progress). They only observe the
loop and flip Trainer's control flags; the recipe (train.py) owns the order."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainerd import atomic, guards
from trainerd.config import Config
from trainerd.jobs import METRICS, PROGRESS_JSON
from trainerd.worker import checkpoints, heartbeat
from trainerd.worker.errors import HostMemoryExceeded, NonFiniteLoss
from trainerd.worker.group import agree, barrier

if TYPE_CHECKING:
    from trainerd.worker.data import JobDataset
    from trainerd.worker.main import StopFlag

log = logging.getLogger("trainerd.worker.train")  # the recipe's log: these steer its loop

PROGRESS_EVERY = 1.0  # seconds between progress.json rewrites (status reads it; no need for more)

def step_callbacks():
    from transformers import TrainerCallback

    class Control(TrainerCallback):
        """At each optimizer-step boundary: honour a stop request with a checkpoint, save
        every T minutes, enforce the host-memory ceiling, and never start a checkpoint
        that the disk cannot hold."""

        def __init__(self, stop: StopFlag, cfg: Config, job_dir: Path):
            self.stop, self.every = stop, cfg.checkpoint.every_minutes * 60
            self.cfg, self.job_dir = cfg, job_dir
            self.last_save = time.monotonic()
            self.max_rss = int(cfg.train.max_host_memory_gb * 1024**3)
            self.disk_low: str | None = None

        def on_train_begin(self, args, state, control, **kw):
            heartbeat.phase("training", state.global_step)  # checkpoint loaded, first step next

        def on_step_end(self, args, state, control, **kw):
            heartbeat.progress(state.global_step)
            if self.max_rss:
                import psutil

                rss = psutil.Process().memory_info().rss
                if rss > self.max_rss:
                    raise HostMemoryExceeded(
                        f"worker RSS {rss / 2**30:.2f} GB passed train.max_host_memory_gb = "
                        f"{self.cfg.train.max_host_memory_gb:g} at step {state.global_step}")
            # Every rank of a group must take the same decision at the same step, or one
            # would wait forever in a collective the others never join: hence agree().
            stop, due = agree(bool(self.stop), time.monotonic() - self.last_save >= self.every)
            if stop:
                control.should_save = True
                control.should_training_stop = True
            elif due:
                control.should_save = True
            if control.should_save:
                heartbeat.phase("checkpointing", state.global_step)  # one long write: busy, not stuck
                newest = checkpoints.committed(self.job_dir)
                r = guards.reading(self.job_dir, self.cfg.disk,
                                   guards.dir_bytes(newest[0]) if newest else 0)
                (low,) = agree(r.low)
                if low:
                    self.disk_low = r.message() if r.low else "another rank found the disk too full"
                    control.should_save = False
                    control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kw):
            self.last_save = time.monotonic()

    class Commit(TrainerCallback):
        """Turn Trainer's plain checkpoint-N folder into a committed, verifiable one."""

        def __init__(self, job_dir: Path, meta: dict[str, Any], progress: Progress, keep: int):
            self.job_dir, self.meta, self.progress, self.keep = job_dir, meta, progress, keep

        def on_save(self, args, state, control, **kw):
            # Every rank writes its own RNG state into checkpoint-N: rank 0 may move the
            # folder only once all of them are done.
            barrier()
            if not state.is_world_process_zero:
                return
            saved = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            t0 = time.monotonic()
            dest = checkpoints.commit(self.job_dir, saved, {
                **self.meta, "step": state.global_step,
                "examples_done": self.progress.examples_done(state.global_step),
                "saved_at": time.time(),
            })
            checkpoints.prune(self.job_dir, self.keep)
            self.progress.checkpoint(dest.name, time.monotonic() - t0, guards.dir_bytes(dest), state)
            heartbeat.phase("training", state.global_step)

    class Progress(TrainerCallback):
        """progress.json (rewritten atomically) and metrics.jsonl, for status and history."""

        def __init__(self, job_dir: Path, attempt: int, ds: JobDataset, per_step: int):
            self.job_dir, self.attempt, self.per_step = job_dir, attempt, per_step
            self.ds = ds
            self.n = ds.examples  # without the group's filler items
            self.tokens_before = ds.tokens_before()
            self.t0 = time.monotonic()
            self.start_tokens: int | None = None
            self.last: dict[str, Any] = {}
            self.last_ckpt: dict[str, Any] = {}
            self.written = 0.0

        def examples_done(self, step: int) -> int:
            return min(self.n, step * self.per_step)

        def on_train_begin(self, args, state, control, **kw):
            self.start_tokens = int(self.tokens_before[self.examples_done(state.global_step)])
            self.t0 = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kw):
            # Logged every step, before that step's checkpoint: a NaN is caught before it
            # can be saved, and the last committed checkpoint is still good.
            logs = logs or {}
            for key in ("loss", "grad_norm"):
                v = logs.get(key)
                if v is not None and not math.isfinite(v):
                    raise NonFiniteLoss(self._where(key, v, state.global_step))
            if not state.is_world_process_zero or "loss" not in logs:
                return
            done = self.examples_done(state.global_step)
            tokens = int(self.tokens_before[done])
            elapsed = max(1e-9, time.monotonic() - self.t0)
            row = {
                "attempt": self.attempt, "step": state.global_step, "ts": time.time(),
                "loss": logs["loss"], "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                "examples_done": done, "tokens_done": tokens,
                "tokens_per_s": (tokens - (self.start_tokens or 0)) / elapsed,
            }
            with open(self.job_dir / METRICS, "a") as f:
                f.write(json.dumps(row) + "\n")
            self.last = row
            if time.monotonic() - self.written >= PROGRESS_EVERY:
                self._write(state)

        def on_train_end(self, args, state, control, **kw):
            if state.is_world_process_zero:
                self._write(state)

        def _where(self, key: str, value: float, step: int) -> str:
            lo, hi = self.examples_done(step - 1), self.examples_done(step)
            lines = sorted(int(self.ds.tok.lines[self.ds.order[k]]) for k in range(lo, hi))
            shown = ", ".join(map(str, lines[:20])) + (" ..." if len(lines) > 20 else "")
            return (f"{key} became {value} at step {step}, on examples {lo}-{hi - 1} of the epoch "
                    f"(data.jsonl lines {shown})")

        def checkpoint(self, name: str, seconds: float, nbytes: int, state) -> None:
            self.last_ckpt = {"last_checkpoint": name, "last_checkpoint_at": time.time(),
                              "last_checkpoint_seconds": seconds, "last_checkpoint_bytes": nbytes}
            self._write(state)  # at once: a stop's checkpoint is the last thing that happens

        def _write(self, state) -> None:
            # A display file: replaced atomically but not fsynced (a crash may lose the
            # last second of it; checkpoints, not this, are what a resume trusts).
            self.written = time.monotonic()
            try:
                import psutil

                rss = psutil.Process().memory_info().rss
            except Exception:
                rss = None
            atomic.write_json(self.job_dir / PROGRESS_JSON, {
                **self.last, **self.last_ckpt, "max_steps": state.max_steps,
                "examples_total": self.n, "rss_bytes": rss, "gpu_bytes": _gpu_bytes(),
                "gpu_peak_bytes": _gpu_bytes(peak=True),
                "pid": os.getpid(), "updated_at": time.time(),
            }, sync=False)

    return Control, Commit, Progress


def _gpu_bytes(peak: bool = False) -> int | None:
    """GPU memory allocated by this process now (or its peak so far: bench/gpu.sh reads it)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated())
