"""`python -m trainerd.worker.tokenize`: the tokenizing stage, in a process of its own.

Two uses of one code path (trainerd.worker.data.tokenize_file, as the worker runs it):

- `--base-dir BASE JOB_DIR...`: the daemon's stage. While the GPU trains one job it
  tokenizes the jobs queued behind it, in claim order: each gets its token cache (the
  worker then loads it instead of tokenizing at start) or, when the file cannot be
  trained (over-length under "fail", a template that refuses a conversation), a
  tokenize-error.json that the daemon turns into failed/ with the reason. A job moved
  away meanwhile is skipped; the daemon may SIGTERM this process at any time (the cache
  is complete or invisible).
- `--check --base-dir BASE FILE...`: `trainerd validate -b BASE`. Prints one JSON object
  per file: the stage's verdict and token report, without writing anything.

The supervisor and the CLI never import this (it imports transformers); they start it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from trainerd import atomic
from trainerd.config import load_config
from trainerd.jobs import TOKEN_ERROR, JobMeta, token_counts
from trainerd.paths import Layout
from trainerd.worker.main import _die_with_parent

log = logging.getLogger("trainerd.worker.tokenize")


def _tokenizer(layout: Layout):
    from trainerd.line.refs import current
    from trainerd.worker.models import load_tokenizer

    cfg = load_config(layout.config)
    return cfg, load_tokenizer(current(layout, cfg))


def stage(layout: Layout, job_dirs: list[Path]) -> int:
    from trainerd.worker.data import DataError, prepare_data

    cfg, tok = _tokenizer(layout)
    for d in job_dirs:
        try:
            meta = JobMeta.load(d)
        except (OSError, ValueError):
            continue  # claimed, moved or removed since the daemon listed it
        t0 = time.monotonic()
        try:
            prepare_data(d, tok, cfg.train, meta.sha256, cfg.data.map, meta.original_name)
        except DataError as e:
            log.info("%s: cannot be trained: %s", meta.id, e)
            try:
                atomic.write_json(d / TOKEN_ERROR, {"reason": str(e), "at": time.time()})
            except OSError:
                pass
            continue
        except FileNotFoundError:
            continue  # moved while it was read: the worker tokenizes it itself
        counts = token_counts(d) or {}
        log.info("%s: %s sequences, %s tokens (%s dropped, %s truncated) in %.1fs", meta.id,
                 counts.get("sequences"), counts.get("tokens"), counts.get("dropped"),
                 counts.get("truncated"), time.monotonic() - t0)
    return 0


def check(layout: Layout, files: list[Path]) -> int:
    from trainerd.worker.data import DataError, token_report, tokenize_file

    cfg, tok = _tokenizer(layout)
    for f in files:
        out: dict = {"path": str(f)}
        try:
            t = tokenize_file(f, tok, cfg.train, cfg.data.map, f.name)
            out.update(ok=True, tokens=token_report(t, cfg.train))
        except DataError as e:
            out.update(ok=False, reason=str(e))
        print(json.dumps(out), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainerd.worker.tokenize")
    ap.add_argument("--base-dir", type=Path, required=True)
    ap.add_argument("--check", action="store_true", help="report on files; write nothing")
    ap.add_argument("paths", type=Path, nargs="+")
    args = ap.parse_args(argv)
    _die_with_parent()  # an orphan must not go on writing into a restarted daemon's queue
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    layout = Layout.at(args.base_dir)
    return check(layout, args.paths) if args.check else stage(layout, args.paths)


if __name__ == "__main__":
    sys.exit(main())
