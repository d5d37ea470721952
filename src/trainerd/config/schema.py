"""The schema of trainerd.toml: one pydantic model per section, with its defaults,
limits and descriptions (the commented default file is generated from these:
trainerd.config.default)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class _Section(BaseModel):
    # A typo in a key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Section):
    """The LoRA adapter a job trains (train.method = "lora")."""

    r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, such as [\"q_proj\", \"v_proj\"], or \"all-linear\""
    )


class TrainConfig(_Section):
    """How each job trains the current model: one epoch over the job's examples."""

    method: Literal["lora", "full"] = Field(
        "lora", description="\"lora\" (an adapter on the current model) or \"full\" (all weights)")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="peak learning rate of each job")
    lr_scheduler: Literal["constant", "cosine"] = Field(
        "constant", description="per job, after warmup: constant, or cosine down to min_lr_ratio"
    )
    warmup_steps: int = Field(10, ge=0, description="per job; the LR never decays with the global step "
                              "count across jobs")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="where cosine ends, as a fraction of learning_rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradients are clipped to this norm")
    micro_batch_size: int = Field(8, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step; effective batch = "
                            "micro_batch_size x grad_accum")
    max_seq_len: int = Field(1024, ge=8, description="tokens per example")
    overlength: Literal["fail", "drop", "truncate"] = Field(
        "fail", description="what a longer example does: \"fail\" the job, \"drop\" the example, \"truncate\" it")
    packing: bool = Field(True, description="padding-free batches (flattened, per-example position ids); "
                          "attention never crosses examples")
    group_by_length: bool = Field(True, description="each optimizer step trains examples of similar "
                                  "lengths (sorted within seeded mega-batches of 50 steps); false = plain shuffle")
    seed: int = Field(1234, description="data order of a job = f(seed, job id), so a resume skips exactly "
                      "what was trained")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = library default")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="\"auto\" (bf16 where supported, else fp32), \"fp32\", \"bf16\", \"fp16\"")
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, more time")
    attention: Literal["auto", "packed_sdpa", "sdpa", "eager", "flash_attention_2", "flex_attention",
                       "varlen"] = Field(
        "auto", description="attention kernel; auto = flash_attention_2 on CUDA when installed, else "
        "packed_sdpa for packed batches and sdpa otherwise; varlen = torch's own flash varlen kernel "
        "for packed rows (CUDA, torch >= 2.9)")
    compile: bool = Field(False, description="torch.compile the model (Trainer's torch_compile; pays off "
                          "on long jobs on a GPU)")
    optimizer: Literal["auto", "adamw_torch", "adamw_torch_fused"] = Field(
        "auto", description="auto = fused AdamW on CUDA, plain AdamW on the CPU")
    max_host_memory_gb: float = Field(
        0, ge=0, description="worker RSS ceiling; above it the micro-batch is halved (0 = off)"
    )
    warm_jobs: int = Field(100, ge=1, le=10000, description="jobs one worker process may train in a row, the "
                           "model kept loaded (trainerd.worker.warm; it also retires when its memory grows by "
                           "25 %); 1 = a fresh process for every job")
    nproc: int = Field(1, ge=1, le=1024, description="processes per node; above 1 the worker runs under torchrun")
    torchrun_args: list[str] = Field(
        default_factory=list, description="extra torchrun arguments, e.g. ['--nnodes=2', "
        "'--rdzv-backend=c10d', '--rdzv-endpoint=HOST:29500'] (default: --standalone)")
    quantization: Literal["none", "4bit"] = Field(
        "none", description="4bit = QLoRA: LoRA on a base loaded in 4 bits (bitsandbytes NF4, double "
        "quantization, bf16 compute; needs bitsandbytes and a CUDA GPU)")
    fsdp: list[Literal["full_shard", "shard_grad_op", "offload", "auto_wrap"]] = Field(
        default_factory=list, description="shard a full fine-tune over the group's processes with FSDP "
        "(FSDP2 where torch has it; sharded checkpoints), e.g. ['full_shard', 'auto_wrap']; [] = off (DDP)")
    lora: LoraConfig = Field(default_factory=LoraConfig)

    # Field validators (not a model validator) so each error names its own key.
    @field_validator("quantization")
    @classmethod
    def _quantized_base_trains_lora(cls, v: str, info: ValidationInfo) -> str:
        if v != "none" and info.data.get("method") == "full":
            raise ValueError(f'a {v} base cannot be fully fine-tuned (only an adapter trains on it); '
                             'set method = "lora" or quantization = "none"')
        return v

    @field_validator("fsdp")
    @classmethod
    def _fsdp_shards_full_fine_tunes(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if v and info.data.get("method") != "full":
            raise ValueError('FSDP shards a full fine-tune (an adapter fits one device); set method = "full" '
                             "or fsdp = []")
        if v and info.data.get("nproc", 1) == 1 and not info.data.get("torchrun_args"):
            raise ValueError("FSDP shards over a group's processes, and nproc = 1 is one; set nproc to the "
                             "number of GPUs (or torchrun_args for several nodes), or fsdp = []")
        return v


class CheckpointConfig(_Section):
    """When the active job saves a checkpoint to resume from."""

    every_steps: int = Field(200, ge=1, description="checkpoint every N optimizer steps ...")
    every_minutes: float = Field(10.0, gt=0, description="... or every T minutes, whichever comes first")
    keep: int = Field(2, ge=1, description="valid checkpoints kept for the active job")


class QueueConfig(_Section):
    """Intake from the inbox (inbox/high, normal, low: the priority) and attempts."""

    settle_seconds: float = Field(2.0, ge=0, description="an inbox file must be seen unchanged this long")
    max_attempts: int = Field(3, ge=1, description="crashes, kills and data errors count; then jobs/failed/")
    # Per-item constraint (not a model validator) so its error is listed with all others.
    backoff_seconds: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [30.0, 120.0, 600.0], description="wait before retry 1, 2, 3... (last one repeats)")
    max_file_mb: float = Field(4096, gt=0, description="larger inbox files are rejected")
    poll_seconds: float = Field(1.0, gt=0, le=60, description="how often the daemon looks at inbox/ and "
                                "control/ without inotify")
    preempt: bool = Field(
        False, description="true: a queued job of higher priority stops the running lower one at its next "
        "step (checkpointed, first again in its queue, not an attempt); the stopped one resumes exactly "
        "but is published held, since the other became current meanwhile (`models rollback V --force`). "
        "Off by default for that reason (docs/DECISIONS.md)")

    def backoff_after(self, failed_attempts: int) -> float:
        if not self.backoff_seconds or failed_attempts <= 0:
            return 0.0
        return self.backoff_seconds[min(failed_attempts, len(self.backoff_seconds)) - 1]


class DaemonConfig(_Section):
    """The supervisor loop."""

    heartbeat_seconds: float = Field(2.0, gt=0, le=60, description="run/status.json is rewritten at least "
                                     "this often")
    stop_grace_seconds: float = Field(
        600, gt=0, description="how long a warm stop waits for the worker's checkpoint"
    )
    stall_seconds: float = Field(
        1800, gt=0, description="no step, phase change or heartbeat progress this long: the worker has "
        "stalled; it is stopped, then killed after stop_grace_seconds, and the attempt counts"
    )


class DiskConfig(_Section):
    """Free space: the daemon pauses itself before a checkpoint could fail, and resumes when
    space returns."""

    min_free_mb: float = Field(1024, ge=0, description="below this much free space the daemon pauses itself ...")
    checkpoint_multiple: float = Field(3.0, ge=0, description="... or below this x the last checkpoint's size")
    warn_free_mb: float = Field(5120, ge=0, description="below this, status and the log warn")


class ServerConfig(_Section):
    """HTTP: status, metrics, the dashboard and control."""

    enabled: bool = Field(True, description="serve HTTP from the daemon")
    host: str = Field("127.0.0.1", description="loopback by default; anything else is your decision")
    port: int = Field(8765, ge=0, le=65535, description="0 = pick a free port (written to run/server.json)")
    max_upload_mb: float = Field(256, gt=0, description="POST /api/queue body limit")


class EvalConfig(_Section):
    """Probe evals after each job (and every_steps), and the forgetting matrix (docs/EVALS.md)."""

    probe_file: str = Field(
        "probe.jsonl", description="probe set (JSONL, training formats) in the base dir; skipped when absent"
    )
    every_steps: int = Field(0, ge=0, description="evaluate every N optimizer steps; 0 = only at job end")
    generate_examples: int = Field(8, ge=0, description="greedy generations compared with the expected answer")
    max_new_tokens: int = Field(64, ge=1, description="longest generated answer")
    max_seconds: float = Field(60.0, gt=0, description="time bound per eval; stops early and records how far it got")
    recall_examples: int = Field(32, ge=0, description="fixed sample of each job's own examples kept to "
                                 "measure forgetting (a copy; still trained); 0 = no forgetting matrix")
    recall_jobs: int = Field(8, ge=0, description="each new version is scored on the last N jobs' recall samples")
    recall_budget: float = Field(
        0.25, ge=0, description="while jobs wait, scoring the earlier jobs' samples may cost this fraction of "
        "the tokens the line trains; with nothing queued a version is always scored on all of them "
        "(docs/EVALS.md)")
    group_by: list[str] = Field(default_factory=list, description="tag keys (top level, then under "
                                "`metadata`) whose values get their own scores, e.g. ['skill']")


class PublishConfig(_Section):
    """Serving follows training (trainerd.publish, docs/SERVING.md): hooks run whenever
    models/current changes. Off while both are empty."""

    command: list[str] = Field(default_factory=list, description="argv run on each change, e.g. "
                               "[\"/usr/local/bin/reload-vllm\"]: env TRAINERD_VERSION, TRAINERD_VERSION_DIR, "
                               "TRAINERD_PARENT_VERSION, TRAINERD_BASE_DIR; a JSON summary on stdin")
    webhook: str = Field("", pattern=r"^(https?://\S+)?$", description="http(s) URL POSTed the same JSON, e.g. "
                         "\"http://127.0.0.1:9000/trainerd\"")
    timeout_seconds: float = Field(60.0, gt=0, le=3600, description="per attempt (a command past it is "
                                   "killed); never blocks training")
    retries: int = Field(3, ge=0, le=20, description="attempts after the first failed one; then the failure "
                         "is in status, state.db and the log")
    backoff_seconds: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0], description="wait before retry 1, 2, 3... (last one repeats)")


class DataMapConfig(_Section):
    """Your own key names for trainerd's fields (docs/FORMATS.md): a file whose objects have
    none of the standard keys is read through this map. Unset keys keep their usual name."""

    messages: str | None = Field(None, examples=["turns"], description="key holding the list of turns")
    role: str | None = Field(None, examples=["speaker"], description="key of a turn's role (values: system/user/assistant/tool)")
    content: str | None = Field(None, examples=["text"], description="key of a turn's text")
    system: str | None = Field(None, examples=["system_prompt"], description="key holding a system prompt for the conversation")
    prompt: str | None = Field(None, examples=["user_prompt"], description="key of the raw-text prompt (prompt/completion)")
    completion: str | None = Field(None, examples=["expected_answer"], description="key of the raw-text completion")
    instruction: str | None = Field(None, examples=["question"], description="key of the instruction (Alpaca, chat-rendered)")
    input: str | None = Field(None, examples=["context"], description="key of the instruction's input (Alpaca)")
    output: str | None = Field(None, examples=["answer"], description="key of the answer (Alpaca)")
    text: str | None = Field(None, examples=["body"], description="key of plain text trained whole")


class DataConfig(_Section):
    """How training files are read."""

    map: DataMapConfig = Field(default_factory=DataMapConfig)


def _time_of_day(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a local time such as \"03:00\", or \"off\"")
    if v.strip().lower() == "off":
        return "off"
    try:
        t = dt.time.fromisoformat(v.strip())
    except ValueError:
        raise ValueError(f"{v!r} is not a local time HH:MM (or \"off\")") from None
    return t.strftime("%H:%M")


def parse_at(v: str) -> dt.time | None:
    return None if v == "off" else dt.time.fromisoformat(v)


class ScheduleConfig(_Section):
    """The daily snapshot + retention (trainerd.schedule, trainerd.line.daily)."""

    snapshot_at: str = Field("03:00", description="daily, local time: copy the current model to "
                             "snapshots/YYYY-MM-DD/, then apply [retention]; \"off\" turns both off")
    min_gap_hours: float = Field(20, ge=0, le=24, description="daily work never runs twice within this much real time")

    @field_validator("snapshot_at", mode="before")
    @classmethod
    def _valid_time(cls, v: Any) -> str:
        return _time_of_day(v)


class ConsolidateConfig(_Section):
    """Merging the LoRA adapter into a new full version, verified first (docs/MODELS.md); only
    when nothing is queued or active."""

    at: str = Field("off", description="daily consolidation at this local time (when idle); \"off\"")
    every_jobs: int = Field(0, ge=0, description="consolidate after N jobs since the last full version; 0 = off")
    probe_examples: int = Field(32, ge=1, le=10000, description="held examples whose loss must not change")
    loss_rtol: float = Field(0.01, gt=0, description="allowed relative change of the probe loss")
    logits_atol: float = Field(0.0, ge=0, description="logits tolerance for a fixed input; 0 = by dtype (1e-3 in fp32, "
                               "0.25 in 16-bit)")

    @field_validator("at", mode="before")
    @classmethod
    def _valid_time(cls, v: Any) -> str:
        return _time_of_day(v)


class RetentionConfig(_Section):
    """What `trainerd gc` and the daily task delete. Never deleted: current, its chain back to
    the last full version, what kept snapshots need."""

    keep_versions: int = Field(10, ge=0, description="newest model versions kept; 0 = all")
    max_models_gb: float = Field(0, ge=0, description="then delete the oldest until under this; 0 = no limit")
    keep_snapshots: int = Field(7, ge=0, description="newest snapshots kept; 0 = all")
    max_snapshots_gb: float = Field(0, ge=0, description="then delete the oldest snapshots until under "
                                    "this; 0 = no limit")
    keep_done_data: int = Field(0, ge=0, description="done jobs whose data.jsonl is kept (replay draws "
                                "from these); 0 = all")
    max_done_data_gb: float = Field(0, ge=0, description="then delete the oldest done jobs' data until "
                                    "under this; 0 = no limit")
    keep_rejected: int = Field(2, ge=0, description="rejected consolidations kept for inspection")


class ReplayConfig(_Section):
    """Old examples mixed into each job against forgetting (docs/BENCHMARKS.md: 41 % -> >= 90 %
    of each job's gain kept)."""

    # 0.25 by default: on the demo's three files it keeps >= 90 % of each job's gain at
    # 1.16x the examples trained (bench/forgetting.py, docs/BENCHMARKS.md); off, 41 %.
    fraction: float = Field(0.25, ge=0, le=10, description="old examples mixed into a job, per new example; 0 = off")
    max_examples: int = Field(2000, ge=0, description="cap on replayed examples per job")


class GateConfig(_Section):
    """The eval gate (trainerd.gate): candidate version against its parent, after each job."""

    mode: Literal["off", "warn", "block"] = Field(
        "warn", description="off: no gate; warn: publish and flag a regression; block: hold it")
    max_probe_regression: float = Field(
        0.05, ge=0, description="relative rise in probe loss allowed versus the parent version")
    max_exact_match_drop: float = Field(0.05, ge=0, le=1, description="absolute drop in probe exact match")
    max_recall_regression: float = Field(
        0.10, ge=0, description="relative rise in the mean recall loss on earlier jobs' samples")


class Config(_Section):
    base_model: str = Field(..., min_length=1, description="the model the line starts from: a local "
                            "directory (config.json, tokenizer, weights) or a Hugging Face hub id already "
                            "in the local cache (trainerd runs with HF_HUB_OFFLINE=1)")
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    disk: DiskConfig = Field(default_factory=DiskConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    consolidate: ConsolidateConfig = Field(default_factory=ConsolidateConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)


