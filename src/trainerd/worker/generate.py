"""`python -m trainerd.worker.generate`: ask a model version, in a process of its own.

The CLI (`trainerd generate / chat / compare`) and the dashboard's "try it" box start this
module; they never import torch themselves (docs/ARCHITECTURE.md). Prompts are rendered exactly as
the probe evals and training see them: a conversation with the model's chat template and
the generation prompt (trainerd.worker.chat.ChatEncoder), greedy unless a temperature is
given, stopping at the end-of-turn marker.

  generate --version V [--file F] [--json] PROMPT...   one answer per prompt, streamed
  chat --version V                                      REPL on stdin: /reset, /version V
  compare A B [--probe F] [--prompts F]                 JSON (trainerd.worker.compare)

Exit status: 0; 2 for something the user can fix (a version, a file, a template); 75
(gpugate.BUSY_EXIT) when training holds the GPU; 1 for anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from trainerd.config import Config, ConfigError, load_config
from trainerd.gpugate import BUSY_EXIT, GpuBusy
from trainerd.line.refs import NoSuchModel, resolve
from trainerd.paths import Layout
from trainerd.worker.asker import Asker, Item, UserError, device_for, item_from, items_from_file
from trainerd.worker.chat import TemplateRefused
from trainerd.worker.compare import compare

log = logging.getLogger("trainerd.worker.generate")

# ------------------------------------------------------------------ commands
def _load(layout: Layout, cfg: Config, spec: str, device: str) -> Asker:
    ref = resolve(layout, cfg, spec)
    print(f"[{ref.version} ({ref.kind}) on {device}]", file=sys.stderr, flush=True)
    return Asker(ref, device, cfg.train.threads)


def cmd_generate(layout: Layout, cfg: Config, args: argparse.Namespace, device: str) -> int:
    items = [item_from(p, cfg) for p in args.prompt]
    if args.file is not None:
        items += items_from_file(args.file, cfg)
    if not items:
        raise UserError("nothing to ask: give a PROMPT or --file F (one prompt or chat JSON per line)")
    asker = _load(layout, cfg, args.version, device)
    for item in items:
        if args.json:
            print(json.dumps(asker.answer(item, args.max_new_tokens, args.temperature)), flush=True)
        else:
            asker.answer(item, args.max_new_tokens, args.temperature, out=sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()
    return 0


def cmd_chat(layout: Layout, cfg: Config, args: argparse.Namespace, device: str) -> int:
    """A REPL on stdin lines; works in a pipe and ends at EOF (or /quit)."""
    asker = _load(layout, cfg, args.version, device)
    history: list[dict[str, Any]] = []
    tty = sys.stdin.isatty()
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() in ("/quit", "/exit"):
            return 0
        if text.strip() == "/reset":
            history = []
            print("[conversation cleared]", file=sys.stderr, flush=True)
            continue
        if text.startswith("/version"):
            spec = text.split(maxsplit=1)[1].strip() if len(text.split()) > 1 else ""
            try:
                asker = _load(layout, cfg, spec or "current", device)  # the conversation is kept
            except NoSuchModel as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
            continue
        if text.startswith("/"):
            print("commands: /reset (new conversation), /version V (switch model), /quit", file=sys.stderr, flush=True)
            continue
        history.append({"role": "user", "content": text})
        reply = asker.answer(Item(text, messages=history), args.max_new_tokens, args.temperature, out=sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": reply["answer"]})


def cmd_compare(layout: Layout, cfg: Config, args: argparse.Namespace, device: str) -> int:
    result = compare(layout, cfg, args.a, args.b, args.probe, args.prompts, args.max_new_tokens,
                     lambda spec: _load(layout, cfg, spec, device))
    print(json.dumps(result), flush=True)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m trainerd.worker.generate")
    ap.add_argument("--base-dir", type=Path, required=True)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--version", default="current")
    g.add_argument("--file", type=Path)
    g.add_argument("--json", action="store_true", help="one JSON object per answer")
    g.add_argument("prompt", nargs="*")
    c = sub.add_parser("chat")
    c.add_argument("--version", default="current")
    m = sub.add_parser("compare")
    m.add_argument("a")
    m.add_argument("b")
    m.add_argument("--probe", type=Path)
    m.add_argument("--prompts", type=Path)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecations are not the operator's
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("TRAINERD_PARENT_PID"):  # started by the daemon: never outlive it
        from trainerd.worker.main import _die_with_parent

        _die_with_parent()
    layout = Layout.at(args.base_dir)
    run = {"generate": cmd_generate, "chat": cmd_chat, "compare": cmd_compare}[args.cmd]
    try:
        cfg = load_config(layout.config)
        for spec in (args.a, args.b) if args.cmd == "compare" else (args.version,):
            resolve(layout, cfg, spec)  # a wrong version fails fast: before torch or a model loads
        with device_for(layout, args.device) as device:
            return run(layout, cfg, args, device)
    except GpuBusy as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return BUSY_EXIT
    except (UserError, NoSuchModel, TemplateRefused, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `trainerd generate ... | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as e:  # one line, not a traceback, for the operator
        log.debug("failed", exc_info=True)
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
