"""Forgetting across the demo's three sample files, per setting, side by side (issue 16).

For each setting: a fresh base dir on the demo's tiny model, the three sample files
(arithmetic, capitals, memory) trained in sequence by the real daemon (`trainerd run
--once` per file), then the loss of base and of every version on the first 60 examples of
each file, computed here from the weights on disk. "Kept" is the share of a job's own gain
(base loss - loss right after it) still there after the later jobs. Time is the sum of the
attempts' wall times (job.json), relative to the first setting.

    nice -n 5 .venv/bin/python bench/forgetting.py [--settings defaults,replay0.25,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from trainerd.bootstrap import samples_dir
from trainerd.paths import Layout

FILES = ("arithmetic", "capitals", "memory")
FIRST = 60

# Each setting is TOML added to the demo's config (trainerd init --tiny-model).
SETTINGS: dict[str, str] = {
    "replay off (old default)": "[replay]\nfraction = 0\n",
    "replay 0.25": "[replay]\nfraction = 0.25\n",
    "replay 0.5": "[replay]\nfraction = 0.5\n",
    "lr 1e-3": "[replay]\nfraction = 0\n[train]\nlearning_rate = 1e-3\n",
    "lr 1e-3 + replay 0.5": "[train]\nlearning_rate = 1e-3\n[replay]\nfraction = 0.5\n",
    "lr 5e-4 + replay 0.5": "[train]\nlearning_rate = 5e-4\n[replay]\nfraction = 0.5\n",
}


def _toml(extra: str, model: Path) -> str:
    """The demo's config (`trainerd init --tiny-model`) with `extra`'s keys laid over it."""
    import tomllib

    from trainerd.config import DEFAULT_TOML

    cfg = tomllib.loads(DEFAULT_TOML.format(base_model=model, learning_rate="2e-3"))
    cfg["queue"]["settle_seconds"], cfg["server"]["port"] = 0, 0

    def overlay(dst: dict, src: dict) -> None:
        for k, v in src.items():
            overlay(dst.setdefault(k, {}), v) if isinstance(v, dict) else dst.__setitem__(k, v)

    overlay(cfg, tomllib.loads(extra))
    lines: list[str] = []

    def emit(prefix: str, table: dict) -> None:
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict))
        for k, v in table.items():
            if isinstance(v, dict):
                emit(f"{prefix}.{k}" if prefix else k, v)

    emit("", cfg)
    return "\n".join(lines) + "\n"


def run_setting(root: Path, model: Path, name: str, extra: str) -> dict:
    base = root / name.replace(" ", "").replace("(", "-").replace(")", "")
    shutil.rmtree(base, ignore_errors=True)
    Layout.at(base).ensure()
    Layout.at(base).config.write_text(_toml(extra, model))
    seconds = 0.0
    for f in FILES:
        tmp = base / "inbox" / f".{f}.jsonl.part"
        shutil.copyfile(samples_dir() / f"{f}.jsonl", tmp)
        tmp.rename(base / "inbox" / f"{f}.jsonl")
        subprocess.run([sys.executable, "-m", "trainerd.cli", "run", "--base-dir", str(base), "--once"],
                       check=True, capture_output=True)
    layout = Layout.at(base)
    for d in layout.done.iterdir():
        meta = json.loads((d / "job.json").read_text())
        seconds += sum((a["ended_at"] or 0) - a["started_at"] for a in meta["attempts"])
    trained = sum(json.loads((layout.models / v / "manifest.json").read_text())["sequences_trained"]
                  for v in ("v0001", "v0002", "v0003"))
    return {"name": name, "seconds": seconds, "trained": trained, "losses": losses(layout, model)}


def losses(layout: Layout, model: Path) -> list[list[float]]:
    """Rows base, v0001, v0002, v0003; columns the three files (first 60 examples each)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainerd.worker.data import tokenize_example

    tok = AutoTokenizer.from_pretrained(model)
    sets = [[s for line in (samples_dir() / f"{f}.jsonl").read_text().splitlines()[:FIRST]
             for s in tokenize_example(json.loads(line), tok)] for f in FILES]
    rows = []
    for v in (None, "v0001", "v0002", "v0003"):
        m = AutoModelForCausalLM.from_pretrained(model)
        if v:
            m = PeftModel.from_pretrained(m, layout.models / v)
        m.eval()
        row = []
        with torch.no_grad():
            for seqs in sets:
                nll, n = 0.0, 0
                for ids, mask in seqs:
                    logits = m(input_ids=torch.tensor([ids])).logits[0, :-1]
                    target = torch.tensor([i if k else -100 for i, k in zip(ids[1:], mask[1:], strict=True)])
                    nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
                    n += int((target != -100).sum())
                row.append(nll / n)
        rows.append(row)
    return rows


def kept(r: list[list[float]], job: int, after: int) -> float:
    """Share of job `job`'s gain (rows: 0 = base, job+1 = right after it) left at row `after`."""
    gain = r[0][job] - r[job + 1][job]
    return (r[0][job] - r[after][job]) / gain if gain else float("nan")


def report(results: list[dict]) -> str:
    t0, n0 = results[0]["seconds"] or 1.0, results[0]["trained"] or 1
    out = ["| setting | version | " + " | ".join(FILES) + " |", "|---|---|---|---|---|"]
    for res in results:
        for i, row in enumerate(res["losses"]):
            label = "base" if i == 0 else f"v000{i} ({FILES[i - 1]})"
            out.append(f"| {res['name']} | {label} | " + " | ".join(f"{x:.2f}" for x in row) + " |")
    out += ["", "| setting | arithmetic kept after 2 jobs | capitals kept after 1 job | worst | "
            "sequences trained vs first | wall time vs first |", "|---|---|---|---|---|---|"]
    for res in results:
        r = res["losses"]
        a, c = kept(r, 0, 3), kept(r, 1, 3)
        out.append(f"| {res['name']} | {a:.0%} | {c:.0%} | {min(a, c):.0%} | {res['trained'] / n0:.2f}x "
                   f"({res['trained']}) | {res['seconds'] / t0:.2f}x ({res['seconds']:.0f} s) |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names: " + ", ".join(SETTINGS))
    ap.add_argument("--dir", type=Path, default=Path("/tmp/trainerd-bench-forgetting"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    model = args.dir / "tiny-model"
    if not (model / "config.json").exists():
        from trainerd.worker.tiny import build_tiny_model

        build_tiny_model(model, samples_dir=samples_dir(), warm_steps=300)  # as `trainerd init --tiny-model`
    results = []
    for name in args.settings.split(","):
        t = time.monotonic()
        results.append(run_setting(args.dir, model, name, SETTINGS[name]))
        print(f"{name}: {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    print(report(results))
    (args.dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
