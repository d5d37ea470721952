"""The commented trainerd.toml that `trainerd init` writes."""

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
