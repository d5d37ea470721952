"""Asking one model version: prompts as items, the loaded model (Asker) that answers and
scores them, and the device it may run on. Used by the `python -m trainerd.worker.generate`
commands and by trainerd.worker.compare."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from trainerd.config import Config
from trainerd.formats import Chat, FormatError, PromptCompletion, Text, parse
from trainerd.gpugate import generation_hold
from trainerd.line.refs import ModelRef
from trainerd.paths import Layout
from trainerd.worker.chat import TemplateRefused

NICE = 10  # on the CPU a generation yields to training (and to everything else)


class UserError(Exception):
    """Something the person asking can fix (exit 2): a bad file, prompt or template."""


# ------------------------------------------------------------------ prompts
@dataclass
class Item:
    """One thing to ask: a conversation so far, or a raw prompt (no template)."""

    label: str  # what a person reads as "the question"
    messages: list[dict[str, Any]] | None = None
    raw: str | None = None
    expected: str | None = None  # the answer a probe/chat line holds, if any


def item_from(value: Any, cfg: Config) -> Item:
    """A prompt string, or a JSON object in a training format (its last assistant turn is
    the expected answer), or {"messages": [...]} ending with the user's turn."""
    if isinstance(value, str):
        return Item(value, messages=[{"role": "user", "content": value}])
    try:
        ex = parse(value, cfg.data.map)
    except FormatError as e:
        msgs = value.get("messages") if isinstance(value, dict) else None
        if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and "role" in m for m in msgs):
            return Item(str(msgs[-1].get("content", "")), messages=msgs)  # no answer yet: fine here
        raise UserError(f"not a prompt: {e}") from None
    if isinstance(ex, Chat):
        last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
        users = [m for m in ex.messages[:last] if m["role"] == "user"]
        return Item(str(users[-1]["content"]) if users else "", messages=ex.messages[:last],
                    expected=ex.messages[last].get("content") or "")
    if isinstance(ex, PromptCompletion):
        return Item(ex.prompt, raw=ex.prompt, expected=ex.completion)
    assert isinstance(ex, Text)
    return Item(ex.text, raw=ex.text)


def items_from_file(path: Path, cfg: Config) -> list[Item]:
    """One prompt per line: JSON (a string or an example) or, if not JSON, the text itself."""
    try:  # "-": stdin (the dashboard sends its prompt this way, not in argv)
        lines = (sys.stdin.read() if str(path) == "-" else path.read_text("utf-8")).splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read prompts from {path}: {e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = line
        try:
            out.append(item_from(value, cfg))
        except UserError as e:
            raise UserError(f"{path}, line {n}: {e}") from None
    return out


# ------------------------------------------------------------------ the model
class _Streamer:
    """Decoded text to `out` as tokens arrive (transformers' streamer protocol). Text is
    written only up to the last complete character, so multi-byte tokens never garble."""

    def __init__(self, tok: Any, out: TextIO, stop: set[int]):
        self.tok, self.out, self.stop = tok, out, stop
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False
        self.ended = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        for t in value.reshape(-1).tolist():
            if t in self.stop:
                self.ended = True
            if not self.ended:
                self.ids.append(t)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        self.out.write(text[self.sent:])
        self.out.flush()
        self.sent = len(text)

    def end(self) -> None:
        pass


class Asker:
    """One model version loaded for answering."""

    def __init__(self, ref: ModelRef, device: str, threads: int = 0):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from trainerd.worker.data import chat_encoder
        from trainerd.worker.evals import _stop_ids
        from trainerd.worker.models import load_tokenizer

        hf_logging.set_verbosity_error()  # "generation flags are not valid" noise on stderr
        hf_logging.disable_progress_bar()  # stderr is for the operator (and the dashboard's errors)
        if threads:
            torch.set_num_threads(threads)
        self.ref, self.device, self.torch = ref, device, torch
        dtype = torch.float32 if device == "cpu" else "auto"
        model = AutoModelForCausalLM.from_pretrained(ref.base, dtype=dtype)
        if ref.kind == "adapter":
            model = PeftModel.from_pretrained(model, str(ref.path))
        self.model = model.to(device).eval()
        self.tok = load_tokenizer(ref)
        try:
            self.enc: Any = chat_encoder(self.tok)
        except TemplateRefused:
            self.enc = None  # raw prompts still work
        stop = set(_stop_ids(self.model, self.tok))
        if self.enc is not None and self.enc.eot:
            eot = self.tok.convert_tokens_to_ids(self.enc.eot)
            if isinstance(eot, int) and eot != self.tok.unk_token_id:
                stop.add(eot)
        self.stop = stop

    def ids(self, item: Item) -> list[int]:
        if item.raw is not None:
            return list(self.tok(item.raw, add_special_tokens=False)["input_ids"])
        if self.enc is None:
            msgs = item.messages or []
            if len(msgs) == 1 and msgs[0].get("role") == "user":  # a base model: the prompt as raw text
                return list(self.tok(str(msgs[0].get("content") or ""), add_special_tokens=False)["input_ids"])
            raise UserError(f"{self.ref.version} has no chat template, so a conversation cannot be "
                            "rendered; ask one prompt at a time, or pass {\"prompt\": ...} lines for raw text")
        try:
            return self.enc.ids(self.enc.render(item.messages or [], None, True))
        except TemplateRefused as e:
            raise UserError(str(e)) from None

    def answer(self, item: Item, max_new_tokens: int, temperature: float = 0.0,
               out: TextIO | None = None) -> dict[str, Any]:
        torch = self.torch
        ids = self.ids(item)
        x = torch.tensor([ids], device=self.device)
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        streamer = _Streamer(self.tok, out, self.stop) if out is not None else None
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else min(self.stop, default=0)
        t0 = time.monotonic()
        with torch.no_grad():
            y = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                    eos_token_id=sorted(self.stop) or None, pad_token_id=pad,
                                    streamer=streamer, **sampling)
        new = y[0, len(ids):].tolist()
        cut = next((i for i, t in enumerate(new) if t in self.stop), len(new))
        text = self.tok.decode(new[:cut], skip_special_tokens=True)
        return {"version": self.ref.version, "prompt": item.label, "answer": text.strip(),
                "tokens": cut, "prompt_tokens": len(ids), "seconds": round(time.monotonic() - t0, 3)}


@contextlib.contextmanager
def device_for(layout: Layout, wanted: str) -> Iterator[str]:
    """The device to run on, held for the duration: a GPU only with the gate's shared hold
    (GpuBusy while training has it); the CPU at a lower priority."""
    import torch

    if wanted == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA device here; use --device cpu")
    if wanted != "cpu" and torch.cuda.is_available():
        with generation_hold(layout):
            yield "cuda"
        return
    with contextlib.suppress(OSError):
        os.nice(NICE)
    yield "cpu"
