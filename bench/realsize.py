"""A real-size model on the CPU: one job of a 0.5B-class model end to end through the daemon.

Builds a random-init model with Qwen2.5-0.5B's shapes (bench/_qwen.py; no download),
saved as a local HF folder in fp32 (the precision the CPU trains in, so the plain script
and the worker compute the same thing), then:

  daemon  `trainerd run --once` on a fresh base dir, the file dropped into inbox/: the
          whole product (intake, preflight, a supervised worker, checkpoints, publish).
          From the job's own records: real tokens/s (metrics.jsonl), the worker's peak
          RSS (VmHWM, read from /proc while it runs), checkpoint size (progress.json) and
          save time (heartbeat.json's phase_seconds: the worker's own clock of Trainer's
          save plus the commit), the overhead that save costs at the default
          cadence (every 200 steps or 10 minutes), and publish time (heartbeat.json's
          phase_seconds).
  plain   the hand-written Trainer + PEFT script of bench/throughput.py (variant b) on the
          same examples, model and settings.
  full    (--full, when the machine has the memory: ~8 GB for fp32 weights, gradients and
          Adam) the same job with `method = "full"`: a full fine-tune's checkpoint and
          version sizes, measured; without it they are computed from the saved weights.

The disk a full-fine-tune version line costs per job is computed from the real saved
sizes and [retention]'s defaults.

    .venv/bin/python bench/realsize.py --json bench/out/realsize.json
    .venv/bin/python bench/realsize.py --full          # also the full fine-tune, if RAM allows
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _qwen  # noqa: E402
from _jobs import ENV, chat_rows, make_base  # noqa: E402
from rss import memory  # noqa: E402

from trainerd.config import CheckpointConfig, RetentionConfig  # noqa: E402
from trainerd.paths import Layout  # noqa: E402

FULL_FT_RAM_GB = 14  # fp32 weights + grads + Adam (8 GB) + logits over 151,936 ids + load copies


def toml(a: argparse.Namespace, method: str) -> str:
    return (f"[train]\nmethod = \"{method}\"\nmicro_batch_size = {a.micro_batch}\nmax_seq_len = {a.max_seq_len}\n"
            f"threads = {a.threads}\nlearning_rate = {a.lr}\nwarmup_steps = {a.warmup}\n"
            f"[train.lora]\nr = {a.lora_r}\nalpha = {a.lora_alpha}\n"
            # A save in the middle and one at the end: the cost of one save, measured in-run.
            f"[checkpoint]\nevery_steps = {a.save_every}\n"
            "[queue]\nsettle_seconds = 0\npoll_seconds = 0.2\n[server]\nenabled = false\n"
            # Beats often enough that heartbeat.json's phase_seconds catch the publish.
            "[daemon]\nheartbeat_seconds = 0.25\n"
            "[eval]\nrecall_examples = 0\n[disk]\nmin_free_mb = 0\nwarn_free_mb = 0\ncheckpoint_multiple = 0\n")


def worker_pids(daemon_pid: int) -> list[int]:
    """The daemon's training worker(s): children running `-m trainerd.worker JOB_DIR`."""
    import psutil

    out = []
    try:
        for c in psutil.Process(daemon_pid).children(recursive=True):
            cmd = c.cmdline()
            if "trainerd.worker" in cmd and not any(x.startswith("trainerd.worker.") for x in cmd):
                out.append(c.pid)
    except psutil.Error:
        pass
    return out


def run_daemon(root: Path, model: Path, rows: list[dict], a: argparse.Namespace, method: str) -> dict:
    layout = Layout.at(make_base(root, model, toml(a, method)).base)
    part = layout.base / ".bench.jsonl.part"
    part.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.rename(part, layout.inbox / "bench.jsonl")
    t0 = time.monotonic()
    with open(root / "daemon.log", "wb") as log:
        p = subprocess.Popen([sys.executable, "-m", "trainerd.cli", "run", "--base-dir", str(layout.base), "--once"],
                             env=ENV, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    peak: dict[str, int] = {}
    while p.poll() is None:
        for pid in worker_pids(p.pid):
            for k, v in memory(pid).items():
                peak[k] = max(peak.get(k, 0), v)
        time.sleep(0.2)
    wall = time.monotonic() - t0
    done = sorted(layout.done.iterdir()) if layout.done.is_dir() else []
    if p.returncode != 0 or len(done) != 1:
        logs = "".join(f.read_text()[-3000:] for f in layout.jobs.rglob("worker.log"))
        raise SystemExit(f"`trainerd run --once` exited {p.returncode} with {len(done)} done job(s):\n"
                         f"{(root / 'daemon.log').read_text()[-3000:]}\n{logs}")
    job = done[0]
    steps = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines() if x.strip()]
    prog = json.loads((job / "progress.json").read_text())
    beat = json.loads((job / "heartbeat.json").read_text())
    # A save's cost: the worker's own clock of its checkpointing phase (Trainer's save plus
    # the commit), exact on a loaded machine where step-gap estimates drown in the noise.
    saves_s = beat.get("phase_seconds", {}).get("checkpointing", 0.0)
    n_saves = steps[-1]["step"] // a.save_every
    gaps = [y["ts"] - x["ts"] for x, y in zip(steps, steps[1:], strict=False)]
    version = layout.models / os.readlink(layout.current_model)
    return {
        "method": method, "process_s": wall, "steps": steps[-1]["step"], "real_tokens": steps[-1]["tokens_done"],
        "tokens_per_s": steps[-1]["tokens_per_s"],
        "step_p50_tokens_per_s": statistics.median(
            (y["tokens_done"] - x["tokens_done"]) / (y["ts"] - x["ts"]) for x, y in zip(steps, steps[1:], strict=False)),
        "median_step_s": statistics.median(gaps), "final_loss": steps[-1]["loss"],
        "peak_rss_bytes": peak.get("VmHWM", 0), "checkpoint_bytes": prog.get("last_checkpoint_bytes"),
        "checkpoint_commit_s": prog.get("last_checkpoint_seconds"),
        "save_s": saves_s / max(1, n_saves), "train_s": steps[-1]["ts"] - steps[0]["ts"],
        "phase_seconds": beat.get("phase_seconds", {}),
        "publish_s": beat.get("phase_seconds", {}).get("publishing"),
        "version_bytes": sum(f.stat().st_size for f in version.rglob("*") if f.is_file()),
    }


def run_plain(work: Path, model: Path, rows: list[dict], a: argparse.Namespace) -> dict:
    from throughput import run_plain as plain

    work.mkdir(parents=True, exist_ok=True)
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = argparse.Namespace(lr=a.lr, warmup=a.warmup, micro_batch=a.micro_batch, threads=a.threads,
                              lora_r=a.lora_r, lora_alpha=a.lora_alpha, seed=0, plain_group_by_length=False)
    return plain(work, model, data, spec)


def at_default_cadence(save_s: float, step_s: float) -> float:
    """Training time with saves / without, at every 200 steps or 10 minutes (first wins)."""
    d = CheckpointConfig()
    between = min(d.every_steps * step_s, d.every_minutes * 60)
    return (between + save_s) / between


def line_cost(version_bytes: int, checkpoint_bytes: int) -> dict:
    """Disk of a full-fine-tune line: each job adds one full version; retention keeps the
    newest keep_versions of them, and the daily snapshot copies current (keep_snapshots
    of those, one a day when current changed); a running job holds `keep` checkpoints,
    deleted when it finishes."""
    r, c = RetentionConfig(), CheckpointConfig()
    versions = version_bytes * (r.keep_versions or 1)
    snapshots = version_bytes * (r.keep_snapshots or 1)
    return {"per_job_bytes": version_bytes, "keep_versions": r.keep_versions, "keep_snapshots": r.keep_snapshots,
            "versions_bytes": versions, "snapshots_bytes": snapshots,
            "while_training_bytes": checkpoint_bytes * c.keep,
            "steady_state_bytes": versions + snapshots + checkpoint_bytes * c.keep}


def gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--save-every", type=int, default=4, help="checkpoint cadence of the bench job (steps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32)
    ap.add_argument("--full", action="store_true", help=f"also a full fine-tune (needs ~{FULL_FT_RAM_GB} GB free)")
    ap.add_argument("--no-plain", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="test-size shapes (a smoke test of the bench itself)")
    ap.add_argument("--work-dir", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    import psutil

    work = a.work_dir or Path(tempfile.mkdtemp(prefix="trainerd-realsize-"))
    work.mkdir(parents=True, exist_ok=True)
    info = _qwen.build(work / "model", _qwen.TINY if a.tiny else _qwen.QWEN25_05B, dtype="float32")
    print(f"model: {info['params']:,} params, fp32 weights {gb(info['weights_bytes'])} saved in {info['save_s']:.1f} s")
    rows = chat_rows(a.examples, seed=0, lo=3, hi=20)
    res: dict = {"model": info, "args": {k: str(v) for k, v in vars(a).items()}}
    res["lora"] = run_daemon(work / "lora", work / "model", rows, a, "lora")
    print(json.dumps(res["lora"], indent=1))
    if not a.no_plain:
        res["plain"] = run_plain(work / "plain", work / "model", rows, a)
        print(json.dumps(res["plain"], indent=1))
        res["a_over_b"] = res["lora"]["tokens_per_s"] / res["plain"]["tokens_per_s"]
    free = psutil.virtual_memory().available / 2**30
    if a.full and (free >= FULL_FT_RAM_GB or a.tiny):
        res["full"] = run_daemon(work / "full", work / "model", rows, a, "full")
        print(json.dumps(res["full"], indent=1))
    elif a.full:
        print(f"full fine-tune skipped: {free:.1f} GB available, it needs ~{FULL_FT_RAM_GB}")
    lora = res["lora"]
    res["lora_overhead_at_default_cadence"] = at_default_cadence(lora["save_s"], lora["median_step_s"])
    full = res.get("full")
    # Without a measured full fine-tune: its version is the fp32 weights just saved, and its
    # checkpoint adds Adam's two fp32 moments per parameter (what torch.save writes).
    version = full["version_bytes"] if full else info["weights_bytes"]
    ckpt = full["checkpoint_bytes"] if full else info["weights_bytes"] + 8 * info["params"]
    res["full_line"] = {**line_cost(version, ckpt), "measured": bool(full)}
    if full:
        res["full_overhead_at_default_cadence"] = at_default_cadence(full["save_s"], full["median_step_s"])
    print(json.dumps({k: v for k, v in res.items() if k not in ("lora", "plain", "full")}, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
