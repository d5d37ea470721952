"""Typed configuration: the pydantic models are the schema of trainerd.toml.

A bad file refuses to start and lists every error at once, each with its key, what was
found and what is allowed (litgpt-style), so one edit fixes them all.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Sections defined beside the code that uses them (schedule.py imports nothing of ours
# that imports this module, so there is no import cycle).
from trainerd.gate import GateConfig
from trainerd.schedule import ConsolidateConfig, ReplayConfig, RetentionConfig, ScheduleConfig


class _Section(BaseModel):
    # A typo in a key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Section):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, or 'all-linear'"
    )


class TrainConfig(_Section):
    method: Literal["lora", "full"] = "lora"
    learning_rate: float = Field(2e-4, gt=0, le=1)
    lr_scheduler: Literal["constant", "cosine"] = Field(
        "constant", description="per job, after warmup: constant, or cosine down to min_lr_ratio"
    )
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_seq_len: int = Field(1024, ge=8)
    overlength: Literal["fail", "drop", "truncate"] = "fail"
    packing: bool = Field(True, description="padding-free batches (flattened, per-example position ids)")
    seed: int = 1234
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = library default")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    attention: Literal["auto", "packed_sdpa", "sdpa", "eager", "flash_attention_2", "flex_attention"] = Field(
        "auto", description="attention kernel; auto = flash_attention_2 on CUDA when installed, else "
        "packed_sdpa for packed batches and sdpa otherwise")
    compile: bool = Field(False, description="torch.compile the model (Trainer's torch_compile)")
    optimizer: Literal["auto", "adamw_torch", "adamw_torch_fused"] = Field(
        "auto", description="auto = fused AdamW on CUDA, plain AdamW on the CPU")
    max_host_memory_gb: float = Field(
        0, ge=0, description="worker RSS ceiling; above it the micro-batch is halved (0 = off)"
    )
    warm_jobs: int = Field(8, ge=1, le=10000, description="jobs one worker process may train in a row, the model "
                           "kept loaded (trainerd.worker.warm); 1 = a fresh process for every job")
    nproc: int = Field(1, ge=1, le=1024, description="processes per node; above 1 the worker runs under torchrun")
    torchrun_args: list[str] = Field(
        default_factory=list, description="extra torchrun arguments, e.g. ['--nnodes=2', "
        "'--rdzv-backend=c10d', '--rdzv-endpoint=HOST:29500'] (default: --standalone)")
    lora: LoraConfig = Field(default_factory=LoraConfig)


class CheckpointConfig(_Section):
    every_steps: int = Field(200, ge=1)
    every_minutes: float = Field(10.0, gt=0)
    keep: int = Field(2, ge=1, description="valid checkpoints kept for the active job")


class QueueConfig(_Section):
    settle_seconds: float = Field(2.0, ge=0, description="an inbox file must be unchanged this long")
    max_attempts: int = Field(3, ge=1)
    # Per-item constraint (not a model validator) so its error is listed with all others.
    backoff_seconds: list[Annotated[float, Field(ge=0)]] = Field(default_factory=lambda: [30.0, 120.0, 600.0])
    max_file_mb: float = Field(4096, gt=0)
    poll_seconds: float = Field(1.0, gt=0, le=60)

    def backoff_after(self, failed_attempts: int) -> float:
        if not self.backoff_seconds or failed_attempts <= 0:
            return 0.0
        return self.backoff_seconds[min(failed_attempts, len(self.backoff_seconds)) - 1]


class DaemonConfig(_Section):
    heartbeat_seconds: float = Field(2.0, gt=0, le=60)
    stop_grace_seconds: float = Field(
        600, gt=0, description="how long a warm stop waits for the worker's checkpoint"
    )
    stall_seconds: float = Field(
        1800, gt=0, description="no step, phase change or heartbeat progress this long: the worker has "
        "stalled; it is stopped, then killed after stop_grace_seconds, and the attempt counts"
    )


class DiskConfig(_Section):
    min_free_mb: float = Field(1024, ge=0, description="below this the daemon pauses itself")
    checkpoint_multiple: float = Field(3.0, ge=0, description="... or below this x the last checkpoint size")
    warn_free_mb: float = Field(5120, ge=0)


class ServerConfig(_Section):
    enabled: bool = True
    host: str = Field("127.0.0.1", description="loopback by default; anything else is your decision")
    port: int = Field(8765, ge=0, le=65535, description="0 = pick a free port (written to run/server.json)")
    max_upload_mb: float = Field(256, gt=0)


class EvalConfig(_Section):
    probe_file: str = Field(
        "probe.jsonl", description="probe set (JSONL, training formats) in the base dir; skipped when absent"
    )
    every_steps: int = Field(0, ge=0, description="evaluate every N optimizer steps; 0 = only at job end")
    generate_examples: int = Field(8, ge=0, description="greedy generations compared with the expected answer")
    max_new_tokens: int = Field(64, ge=1)
    max_seconds: float = Field(60.0, gt=0, description="time bound per eval; stops early and records how far it got")
    recall_examples: int = Field(32, ge=0, description="fixed sample of each job's own examples kept to "
                                 "measure forgetting (a copy; still trained); 0 = no forgetting matrix")
    recall_jobs: int = Field(8, ge=0, description="each new version is scored on the last N jobs' recall samples")
    group_by: list[str] = Field(default_factory=list, description="tag keys (top level, then under "
                                "`metadata`) whose values get their own scores, e.g. ['skill']")


class PublishConfig(_Section):
    """Serving follows training (trainerd.publish, docs/SERVING.md): hooks run whenever
    models/current changes. Off while both are empty."""

    command: list[str] = Field(default_factory=list, description="argv run on each change; JSON summary on stdin")
    webhook: str = Field("", pattern=r"^(https?://\S+)?$", description="http(s) URL POSTed the same JSON")
    timeout_seconds: float = Field(60.0, gt=0, le=3600, description="per attempt; a command past it is killed")
    retries: int = Field(3, ge=0, le=20, description="attempts after the first failed one")
    backoff_seconds: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0], description="wait before retry 1, 2, 3... (last one repeats)")


class DataMapConfig(_Section):
    """Your own key names for trainerd's fields (docs/FORMATS.md): a file whose objects have
    none of the standard keys is read through this map. Unset keys keep their usual name."""

    messages: str | None = Field(None, description="key holding the list of turns")
    role: str | None = Field(None, description="key of a turn's role (values: system/user/assistant/tool)")
    content: str | None = Field(None, description="key of a turn's text")
    system: str | None = Field(None, description="key holding a system prompt for the conversation")
    prompt: str | None = Field(None, description="key of the raw-text prompt (prompt/completion)")
    completion: str | None = Field(None, description="key of the raw-text completion")
    instruction: str | None = Field(None, description="key of the instruction (Alpaca, chat-rendered)")
    input: str | None = Field(None, description="key of the instruction's input (Alpaca)")
    output: str | None = Field(None, description="key of the answer (Alpaca)")
    text: str | None = Field(None, description="key of plain text trained whole")


class DataConfig(_Section):
    map: DataMapConfig = Field(default_factory=DataMapConfig)


class Config(_Section):
    base_model: str = Field(..., min_length=1, description="local directory or hub id")
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


class ConfigError(Exception):
    """Every problem with a config file, with keys and what is allowed; raised once."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{path}: {len(problems)} problem(s) in the config; trainerd will not start until "
            f"they are fixed:\n{lines}"
        )


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key (typo?); remove it or check the documented keys"
    if kind == "missing":
        return f"{key}: required but missing"
    found = err.get("input")
    allowed = err.get("ctx", {}).get("expected")
    msg = err["msg"]
    if allowed:
        return f"{key}: {found!r} is not allowed; expected {allowed}"
    return f"{key}: {msg} (found {found!r})"


def parse_config(data: dict, path: Path) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(path, [_describe(err) for err in e.errors()]) from None


def load_config(path: Path) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, ["file not found; create it with `trainerd init --base-dir DIR`"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(path, [f"not UTF-8 text at byte {e.start}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"TOML syntax: {e}"]) from None
    cfg = parse_config(data, path)
    # A relative base_model that exists next to the config is resolved against it.
    candidate = path.parent / cfg.base_model
    if not Path(cfg.base_model).is_absolute() and candidate.exists():
        cfg.base_model = str(candidate.resolve())
    return cfg


DEFAULT_TOML = """\
# trainerd configuration. Every key is optional except base_model; the values shown are
# the defaults. A bad key or value stops `trainerd run` with a list of every problem.

# The model the line starts from: a local directory (config.json, tokenizer, weights) or a
# Hugging Face hub id already in the local cache (trainerd runs with HF_HUB_OFFLINE=1).
base_model = "{base_model}"

[train]
method = "lora"              # "lora" (adapter on the current model) or "full"
learning_rate = {learning_rate}
lr_scheduler = "constant"    # per job: warmup, then "constant" or "cosine" to min_lr_ratio
warmup_steps = 10            # the LR never decays with the global step count across jobs
min_lr_ratio = 0.1
weight_decay = 0.0
max_grad_norm = 1.0
micro_batch_size = 8         # examples per micro-batch
grad_accum = 1               # effective batch = micro_batch_size * grad_accum
max_seq_len = 1024           # tokens per example
overlength = "fail"          # what to do with longer examples: "fail", "drop", "truncate"
packing = true               # padding-free batches; attention never crosses examples
seed = 1234                  # data order of a job = f(seed, job id); resumes skip exactly
threads = 0                  # CPU threads for torch; 0 = library default
precision = "auto"           # "auto" (bf16 where supported), "fp32", "bf16", "fp16"
gradient_checkpointing = false
attention = "auto"           # "auto": flash_attention_2 on CUDA if installed, else "packed_sdpa"
                             # (SDPA per packed example) or "sdpa"; also "eager", "flex_attention"
compile = false              # torch.compile the model (pays off on long jobs on a GPU)
optimizer = "auto"           # "auto" (fused AdamW on CUDA), "adamw_torch", "adamw_torch_fused"
max_host_memory_gb = 0       # worker RSS ceiling; over it: halve the micro-batch and resume (0 = off)
warm_jobs = 8                # jobs one worker process trains in a row, model kept loaded; 1 = one each
nproc = 1                    # processes (GPUs) per node; above 1 the worker runs under torchrun (DDP)
torchrun_args = []           # multi-node: ["--nnodes=2", "--node-rank=0", "--rdzv-backend=c10d",
                             #              "--rdzv-endpoint=HOST:29500"]; default --standalone

[train.lora]
r = 16
alpha = 32
dropout = 0.0
target_modules = "all-linear"   # or a list such as ["q_proj", "v_proj"]

[checkpoint]
every_steps = 200            # checkpoint every N optimizer steps ...
every_minutes = 10           # ... or every T minutes, whichever comes first
keep = 2                     # valid checkpoints kept for the active job

[queue]
settle_seconds = 2           # an inbox file must be seen unchanged this long (inbox/high|normal|low: priority)
max_attempts = 3             # crashes, kills and data errors count; then jobs/failed/
backoff_seconds = [30, 120, 600]   # wait before retry 1, 2, 3...
max_file_mb = 4096           # larger inbox files are rejected
poll_seconds = 1.0           # how often the daemon looks at inbox/control without inotify

[daemon]
heartbeat_seconds = 2        # run/status.json is rewritten at least this often
stop_grace_seconds = 600     # a warm stop waits this long for the worker's checkpoint
stall_seconds = 1800         # no step, phase change or load progress this long: stop, kill, count it

[disk]
min_free_mb = 1024           # below this much free space the daemon pauses itself ...
checkpoint_multiple = 3      # ... or below 3x the last checkpoint's size; it resumes when space returns
warn_free_mb = 5120

[server]
enabled = true               # HTTP status, metrics, dashboard and control
host = "127.0.0.1"           # loopback only unless you change it
port = 8765                  # 0 = any free port (see run/server.json)
max_upload_mb = 256          # POST /api/queue body limit

[schedule]
snapshot_at = "03:00"        # daily, local time: copy the current model to snapshots/YYYY-MM-DD/,
                             # then apply [retention]; "off" turns both off
min_gap_hours = 20           # never twice within this much real time, whatever the clock does

[consolidate]
at = "off"                   # merge the LoRA adapter into a new full version daily at this local
                             # time, only when nothing is queued or active; "off"
every_jobs = 0               # ... or after this many jobs since the last full version (0 = off)
probe_examples = 32          # held examples (BASE/probe.jsonl, else from done jobs) ...
loss_rtol = 0.01             # ... whose loss must not change by more than this (relative)
logits_atol = 0              # logits tolerance for a fixed input; 0 = 1e-3 in fp32, 0.25 in 16-bit

[retention]
keep_versions = 10           # newest model versions kept (0 = all). Never deleted: current, its
max_models_gb = 0            # chain back to the last full version, what snapshots need (0 = no limit)
keep_snapshots = 7           # newest snapshots kept (0 = all)
max_snapshots_gb = 0
keep_done_data = 0           # done jobs whose data.jsonl is kept (0 = all; replay draws from these)
max_done_data_gb = 0
keep_rejected = 2            # failed consolidations kept for inspection

[replay]
fraction = 0.25              # add ceil(fraction x a job's examples) old examples to its epoch, against
                             # forgetting (docs/BENCHMARKS.md: 41 % -> >= 90 % of each job's gain kept); 0 = off
max_examples = 2000          # at most this many per job

[eval]
probe_file = "probe.jsonl"   # probe set in the base dir (same formats as training); no file, no evals
every_steps = 0              # also evaluate every N steps; 0 = only at the end of each job
generate_examples = 8        # greedy answers compared with the expected last assistant turn
max_new_tokens = 64
max_seconds = 60             # per eval: stops early (and records how many it did) past this
recall_examples = 32         # a fixed copy of each job's examples, to measure forgetting (docs/EVALS.md)
recall_jobs = 8              # each new version is scored on the last N jobs' recall samples
group_by = []                # tags scored per value, e.g. ["skill"] (top level, then under "metadata")

[gate]
mode = "warn"                # after each job, candidate vs parent: "off", "warn" (flag), "block" (hold)
max_probe_regression = 0.05  # relative rise in probe loss allowed
max_exact_match_drop = 0.05  # absolute drop in probe exact match allowed
max_recall_regression = 0.10 # relative rise in loss on earlier jobs' recall samples allowed

[publish]                    # serving follows training (docs/SERVING.md): on every change of models/current
command = []                 # e.g. ["/usr/local/bin/reload-vllm"]: env TRAINERD_VERSION, TRAINERD_VERSION_DIR,
                             # TRAINERD_PARENT_VERSION, TRAINERD_BASE_DIR; a JSON summary on stdin
webhook = ""                 # e.g. "http://127.0.0.1:9000/trainerd": POSTed the same JSON
timeout_seconds = 60         # per attempt (a command past it is killed); never blocks training
retries = 3                  # then the failure is in status, state.db and the log
backoff_seconds = [5, 30, 120]

[data.map]                   # your own key names for trainerd's fields (docs/FORMATS.md), e.g.
# prompt = "user_prompt"     # raw-text prompt/completion: {{"user_prompt": ..., "expected_answer": ...}}
# completion = "expected_answer"
# instruction = "question"   # or chat-rendered, as Alpaca: instruction / input / output
# output = "answer"
# messages = "turns"         # conversations under other keys: messages / role / content / system
# role = "speaker"
# content = "text"
# text = "body"              # plain text, trained whole
"""
