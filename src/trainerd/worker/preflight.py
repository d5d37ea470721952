"""Can the model the worker will train be loaded? Config, tokenizer, chat template.

Run by the daemon at start and on SIGHUP as `python -m trainerd.worker.preflight --weights W
--tokenizer T` (the supervisor imports no transformers), and in every worker before it
tokenizes: a model that disappeared, or a tokenizer whose template raises, is then a
pause with the reason, not three failed attempts with a misleading hub error.
Prints one JSON object; exit 0 when the model is usable, 2 when it is not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

# A conversation no template can legitimately refuse: one user turn, one assistant turn,
# plain text (strict templates reject a system turn, two users in a row or an empty turn).
PROBE_CONVERSATION = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hello!"}]


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded as configured; says what and what to do."""


def check_tokenizer(tokenizer: Any, source: str) -> list[str]:
    """Render PROBE_CONVERSATION with the chat template; raise ModelUnavailable if it raises.
    Returns warnings (no template at all: only text and prompt/completion files train)."""
    if not getattr(tokenizer, "chat_template", None):
        return [f"{source} has no chat template: files in the messages format will fail; "
                "text and prompt/completion files train"]
    try:
        text = tokenizer.apply_chat_template(PROBE_CONVERSATION, tokenize=False)
        ids = tokenizer.apply_chat_template(PROBE_CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    except Exception as e:
        raise ModelUnavailable(
            f"the chat template of {source} raises on a plain user -> assistant conversation "
            f"({type(e).__name__}: {e}); fix or replace its chat_template") from e
    if not text or not len(ids):
        raise ModelUnavailable(f"the chat template of {source} renders a user -> assistant conversation "
                               "as nothing; fix or replace its chat_template")
    return []


def load_checked(weights: str, tokenizer_source: str, quantization: str = "none",
                 fsdp: bool = False) -> tuple[Any, list[str]]:
    """(tokenizer, warnings) after the config of `weights` and the tokenizer of
    `tokenizer_source` loaded from local files only, and `train.quantization` and
    `train.fsdp` can work here; ModelUnavailable otherwise."""
    from transformers import AutoConfig, AutoTokenizer

    from trainerd.worker import fsdp as sharding
    from trainerd.worker import quant

    why = quant.problem(quantization) or sharding.problem(fsdp)
    if why:
        raise ModelUnavailable(why)

    try:
        AutoConfig.from_pretrained(weights, local_files_only=True)
    except Exception as e:
        raise ModelUnavailable(f"the model config of {weights} does not load from local files "
                               f"({type(e).__name__}: {_first_line(e)})") from e
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_source, local_files_only=True)
    except Exception as e:
        raise ModelUnavailable(f"the tokenizer of {tokenizer_source} does not load from local files "
                               f"({type(e).__name__}: {_first_line(e)})") from e
    return tok, check_tokenizer(tok, tokenizer_source)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainerd.worker.preflight")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--quantization", default="none", help="train.quantization to check (default none)")
    ap.add_argument("--fsdp", action="store_true", help="train.fsdp is set: check it can shard here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    try:
        _tok, warnings = load_checked(args.weights, args.tokenizer, args.quantization, args.fsdp)
        out: dict[str, Any] = {"ok": True, "warnings": warnings}
    except ModelUnavailable as e:
        out = {"ok": False, "problem": str(e)}
    out["seconds"] = round(time.monotonic() - t0, 3)
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 2


if __name__ == "__main__":
    sys.exit(main())
