"""The recipe: one attempt of one job, in the order it happens (torchtune-style).

resolve current model -> tokenize (or load the cache) -> load weights -> pick the newest
valid checkpoint -> train the rest of the epoch with HF Trainer -> publish -> clean up.
Components are plain objects; the callbacks below only observe the loop and flip
Trainer's control flags (save now, stop now). Probe evals (worker/evals.py) and TensorBoard
event files (job_dir/tensorboard) are callbacks too, and never change what is trained.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainerd import __version__, atomic, guards
from trainerd.config import Config, load_config
from trainerd.jobs import METRICS, PROGRESS_JSON, TENSORBOARD, ExitCode, JobMeta
from trainerd.line.refs import NoSuchModel, current, published_version, resolve
from trainerd.line.replay import REPLAY_JSONL, replay_for_job
from trainerd.paths import Layout
from trainerd.worker import checkpoints, fsdp, heartbeat, models, preflight, timing
from trainerd.worker.collate import collator
from trainerd.worker.data import JobDataset, prepare, training_order
from trainerd.worker.errors import DiskLow, HostMemoryExceeded, NonFiniteLoss
from trainerd.worker.lineboard import summary_writer

if TYPE_CHECKING:
    from trainerd.worker.main import StopFlag
    from trainerd.worker.warm import Carry

log = logging.getLogger("trainerd.worker.train")


PROGRESS_EVERY = 1.0  # seconds between progress.json rewrites (status reads it; no need for more)



def _callbacks():
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


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> None:
    """Join the torchrun group early (gloo on the CPU, NCCL on GPUs): the data preparation
    below needs barriers before Trainer would set the group up itself."""
    import torch
    import torch.distributed as dist

    if _world()[1] == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on any rank becomes true on all ranks (identity in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tuple(flags)
    import torch

    t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(x) for x in t.tolist())


def rank0_first(fn):
    """fn() on rank 0, then on the others (which then find its cache ready)."""
    rank, world = _world()
    if world > 1 and rank != 0:
        barrier()
    try:
        return fn()
    finally:
        if world > 1 and rank == 0:
            barrier()


def _gpu_bytes(peak: bool = False) -> int | None:
    """GPU memory allocated by this process now (or its peak so far: bench/gpu.sh reads it)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated())


def tensorboard_callback(job_dir: Path) -> Any:
    """transformers' TensorBoardCallback writing to job_dir/tensorboard, or None when neither
    tensorboardX nor tensorboard can be imported: event files are for people, so their
    absence is a log line, never a failed job.

    Not `report_to="tensorboard"`: its directory is `logging_dir`, a TrainingArguments field
    transformers 5 removed (the callback now defaults under output_dir, our checkpoint
    staging dir, which is cleared). Giving the callback its writer works on 4.x and 5.x.
    """
    from transformers.integrations import TensorBoardCallback

    writer = summary_writer(job_dir / TENSORBOARD)
    return None if writer is None else TensorBoardCallback(writer)


def _job_trainer():
    import torch
    from transformers import Trainer

    class JobTrainer(Trainer):
        """Trainer that keeps the job's own data order (the dataset is already permuted by
        the job seed), so resume skipping lands on exactly the untrained examples."""

        def _get_train_sampler(self, *args: Any, **kwargs: Any):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    return JobTrainer


def training_arguments(cfg: Config, output_dir: Path, seed: int):
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    cuda = torch.cuda.is_available()
    dtype = models.torch_dtype(t)
    sched = "constant_with_warmup" if t.lr_scheduler == "constant" else "cosine_with_min_lr"
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=1,
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        # Per job: warmup, then constant or cosine to a floor *within this job*. A new job
        # gets a new schedule, so the LR never decays with the global step across jobs.
        lr_scheduler_type=sched,
        lr_scheduler_kwargs={} if sched == "constant_with_warmup" else {"min_lr_rate": t.min_lr_ratio},
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=1,
        # Trainer would replace a NaN loss by the running mean in the logs; we want to see it.
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=cfg.checkpoint.every_steps,
        save_total_limit=None,  # retention is ours (only committed checkpoints count)
        seed=seed,
        data_seed=seed,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        bf16=dtype == torch.bfloat16 and cuda,
        fp16=dtype == torch.float16 and cuda,
        gradient_checkpointing=t.gradient_checkpointing,
        optim=t.optimizer if t.optimizer != "auto" else "adamw_torch_fused" if cuda else "adamw_torch",
        torch_compile=t.compile,
        ddp_find_unused_parameters=False,
        **fsdp.arguments(t),
    )


def _stop_before_training(stop: StopFlag, during: str) -> bool:
    """A stop that arrives while the worker starts is honoured at the next of these points
    (nothing is trained yet, so nothing is lost), on every rank of a group together."""
    (stopping,) = agree(bool(stop))
    if stopping:
        log.info("stop requested while %s (%s); nothing trained yet", during, stop.reason or "another rank")
    return stopping


def run_job(job_dir: Path, layout: Layout, stop: StopFlag, carry: Carry | None = None) -> ExitCode:
    import torch

    from trainerd.worker import evals, lineboard, recall

    cfg = load_config(layout.config)
    meta = JobMeta.load(job_dir)
    attempt = len(meta.attempts) or 1
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)

    done_as = published_version(layout, cfg, meta)
    if done_as is not None:
        log.info("%s is already published as %s (the last attempt died after publishing)", meta.id, done_as)
        checkpoints.clear(job_dir)
        return ExitCode.FINISHED

    parent = current(layout, cfg)
    was = checkpoints.trained_on(job_dir) if meta.preempted_by else None
    if was is not None and was != parent.version:
        # queue.preempt: resume exactly, on the version it trained from; published held, since
        # the job that preempted it moved current meanwhile (docs/DECISIONS.md). A version gone
        # since (gc) leaves current, and its checkpoint is set aside as after any move.
        try:
            parent = resolve(layout, cfg, was)
            log.info("%s was preempted by %s; resuming on %s (current is %s)", meta.id, meta.preempted_by,
                     was, current(layout, cfg).version)
        except NoSuchModel as e:
            log.warning("%s: cannot resume on %s (%s); training from current", meta.id, was, e)
    # A warm worker's previous job published `parent` from this very model: no load.
    kept = carry.take(parent, cfg) if carry is not None else None
    timing.mark("resolve")
    # The daemon's preflight, again here: a model that vanished or a template that raises
    # pauses the daemon (ModelUnavailable) instead of failing this job's attempts.
    tokenizer = kept.tokenizer if kept else \
        models.with_pad_token(preflight.load_checked(parent.base, parent.tokenizer_source,
                                                     cfg.train.quantization, bool(cfg.train.fsdp))[0])
    timing.mark("tokenizer")
    init_distributed()
    world = _world()[1]

    def prepare_data():
        # Replay against forgetting: a fixed sample of done jobs' examples joins this epoch.
        _, replay = replay_for_job(layout, job_dir, cfg.replay.fraction, meta.examples,
                                             cfg.replay.max_examples, cfg.data.map)
        return replay, prepare(job_dir, tokenizer, cfg.train, meta.sha256,
                               job_dir / REPLAY_JSONL if replay else None,
                               replay["sha256"] if replay else "", cfg.data.map, meta.original_name)

    heartbeat.phase("tokenizing")
    replay, tok = rank0_first(prepare_data)  # one writer of replay.jsonl and the token cache
    timing.mark("data")
    heartbeat.phase("loading")
    if _stop_before_training(stop, "tokenizing"):
        return ExitCode.STOPPED
    seed = (cfg.train.seed ^ meta.seed) & 0x7FFFFFFF
    log.info("%s: %d examples as %d sequences (%d dropped, %d truncated), %d tokens; model %s (%s)",
             meta.id, tok.examples, len(tok), tok.dropped, tok.truncated, int(tok.offsets[-1]),
             parent.version, parent.kind)

    ckpt_meta = {"job_id": meta.id, "model_version": parent.version, "method": cfg.train.method,
                 "trainerd_version": __version__}
    # Rank 0 first: choosing also discards half-written saves and sets bad ones aside, and
    # two ranks doing that at once raced (one's rmtree found the other had removed it).
    resume, man = rank0_first(lambda: checkpoints.latest_valid(
        job_dir, {"model_version": parent.version, "method": cfg.train.method}))
    if resume is not None:
        log.info("resuming from %s (step %s, %s examples done)", resume.name, man.get("step"),
                 man.get("examples_done"))

    torch.manual_seed(seed)
    model = kept.model if kept else models.load_for_training(parent, cfg.train)
    del kept  # the carry holds it until the next keep or drop
    timing.mark("model_load")
    if _stop_before_training(stop, "loading the model"):
        return ExitCode.STOPPED
    if meta.micro_batch_size and meta.micro_batch_size != cfg.train.micro_batch_size:
        effective = cfg.train.micro_batch_size * cfg.train.grad_accum
        mb = meta.micro_batch_size
        cfg.train.micro_batch_size, cfg.train.grad_accum = mb, effective // mb
        log.info("out-of-memory fallback: micro-batch %d x grad_accum %d (same effective batch %d)",
                 mb, effective // mb, effective)
    per_step = cfg.train.micro_batch_size * cfg.train.grad_accum * world
    ds = JobDataset(tok, training_order(tok.lengths(), seed, per_step, cfg.train.group_by_length))
    # A group shards micro-batches round-robin and needs as many on every rank; filler
    # items (one token, no label) complete the last round instead of accelerate's default
    # of training the epoch's first examples a second time.
    ds.pad_to_multiple(cfg.train.micro_batch_size * world, tokenizer.pad_token_id or 0)
    Control, Commit, Progress = _callbacks()
    progress = Progress(job_dir, attempt, ds, per_step)
    ctl = Control(stop, cfg, job_dir)
    probe = evals.callback(layout, cfg, job_dir, attempt, tokenizer, stop)
    if cfg.train.fsdp and probe is not None:  # rank 0 alone runs evals; a sharded forward needs all
        log.warning("train.fsdp: no probe evals, gate or forgetting scores for this job (docs/MODELS.md)")
        probe = None
    # The parent's scores for the gate and the forgetting matrix: on the model as loaded,
    # before any step (rank 0 alone; worker/recall.py).
    scorer = recall.start(layout, cfg, meta, parent, tokenizer, job_dir, model,
                          probe.probe if probe else None) if _world()[0] == 0 and not cfg.train.fsdp else None
    timing.mark("parent_scores")
    trainer = _job_trainer()(
        model=model,
        args=training_arguments(cfg, checkpoints.staging(job_dir), seed),
        train_dataset=ds,
        data_collator=collator(cfg, tokenizer, model),
        callbacks=[ctl, progress, Commit(job_dir, ckpt_meta, progress, cfg.checkpoint.keep),
                   *([probe] if probe else [])],
    )
    fsdp.check_applied(trainer, cfg.train)
    if _stop_before_training(stop, "setting up the trainer"):
        return ExitCode.STOPPED
    tb = tensorboard_callback(job_dir) if trainer.is_world_process_zero() else None
    line = lineboard.callback(layout, parent) if trainer.is_world_process_zero() else None
    if line is not None:  # the model line's own run, its step continuing across jobs
        trainer.add_callback(line)
    if tb is not None:
        trainer.add_callback(tb)
        if probe is not None:
            probe.tb = tb  # probe scalars beside the training ones
    timing.mark("trainer_setup")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    timing.mark("train")

    if ctl.disk_low:
        raise DiskLow(f"stopped at step {trainer.state.global_step} before checkpointing: {ctl.disk_low}")
    if trainer.state.global_step < trainer.state.max_steps:
        log.info("stopped at step %d/%d with a checkpoint (%s)", trainer.state.global_step,
                 trainer.state.max_steps, stop.reason or "stop requested")
        return ExitCode.STOPPED
    gathered = fsdp.gather(trainer, cfg.train)  # a sharded model's weights: every rank joins
    if trainer.is_world_process_zero():
        heartbeat.phase("eval", trainer.state.global_step)  # the gate's scoring is an eval
        # After the last step, before publishing: the candidate's scores and the gate's verdict.
        scored = scorer.after(trainer.model, probe.final_row if probe else None) if scorer else {}
        if line is not None:
            line.scores(trainer.state.global_step, scored)
        timing.mark("candidate_scores")
        heartbeat.phase("publishing", trainer.state.global_step)
        models.for_saving(trainer.model)
        held = scored.get("gate", {}).get("action") == "held"
        version = models.publish(layout, trainer.model, tokenizer, parent, meta,
                                 {"examples_trained": tok.examples, "sequences_trained": ds.examples,
                                  "steps": trainer.state.global_step,
                                  "dropped": tok.dropped, "truncated": tok.truncated,
                                  "final_loss": progress.last.get("loss"), "replay": replay, **scored,
                                  "line_step": lineboard.offset(parent) + trainer.state.global_step},
                                 make_current=not held, preempted_by=meta.preempted_by, state_dict=gathered)
        log.info("%s: %s %s", meta.id, "held by the eval gate:" if held else "published", version)
        if carry is not None:
            carry.keep(trainer.model, tokenizer, version, layout, held)
        checkpoints.clear(job_dir)
        timing.mark("publish")
    return ExitCode.FINISHED
