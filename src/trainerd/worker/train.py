"""The recipe: one attempt of one job, in the order it happens (torchtune-style).

resolve current model -> tokenize (or load the cache) -> load weights -> pick the newest
valid checkpoint -> train the rest of the epoch with HF Trainer -> publish -> clean up.
Components are plain objects; the callbacks below only observe the loop and flip
Trainer's control flags (save now, stop now). Probe evals (worker/evals.py) and TensorBoard
event files (job_dir/tensorboard) are callbacks too, and never change what is trained.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainerd import __version__
from trainerd.config import Config, load_config
from trainerd.jobs import TENSORBOARD, ExitCode, JobMeta
from trainerd.line.refs import NoSuchModel, current, published_version, resolve
from trainerd.line.replay import REPLAY_JSONL, replay_for_job
from trainerd.paths import Layout
from trainerd.worker import checkpoints, fsdp, heartbeat, models, preflight, timing
from trainerd.worker.callbacks import step_callbacks
from trainerd.worker.collate import collator
from trainerd.worker.data import JobDataset, prepare, training_order
from trainerd.worker.errors import DiskLow
from trainerd.worker.group import agree, init_distributed, rank0_first, world_rank_size
from trainerd.worker.lineboard import summary_writer

if TYPE_CHECKING:
    from trainerd.worker.main import StopFlag
    from trainerd.worker.warm import Carry

log = logging.getLogger("trainerd.worker.train")


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
    world = world_rank_size()[1]

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
    Control, Commit, Progress = step_callbacks()
    progress = Progress(job_dir, attempt, ds, per_step)
    ctl = Control(stop, cfg, job_dir)
    probe = evals.callback(layout, cfg, job_dir, attempt, tokenizer, stop)
    if cfg.train.fsdp and probe is not None:  # rank 0 alone runs evals; a sharded forward needs all
        log.warning("train.fsdp: no probe evals, gate or forgetting scores for this job (docs/MODELS.md)")
        probe = None
    # The parent's scores for the gate and the forgetting matrix: on the model as loaded,
    # before any step (rank 0 alone; worker/recall.py).
    scorer = recall.start(layout, cfg, meta, parent, tokenizer, job_dir, model,
                          probe.probe if probe else None) if world_rank_size()[0] == 0 and not cfg.train.fsdp else None
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
