"""From data.jsonl to training rows: render, mask, tokenize once, cache, order by seed.

Labels come from the tokenizer's chat template: with `{% generation %}` markers the
template itself marks assistant tokens; without them, each assistant turn is located by
rendering the conversation up to it (prefix diff), never by searching for a role string.
The tokenized job is cached in the job dir (complete or invisible, with a manifest), so a
resumed attempt neither re-reads nor re-tokenizes; Trainer's sampler-level batch skipping
then starts exactly at the first untrained example.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainerd import atomic
from trainerd.config import TrainConfig
from trainerd.jobs import DATA
from trainerd.validate import MAX_ERRORS, example_format, iter_lines
from trainerd.worker import tokcache
from trainerd.worker.tokcache import TokenWriter

log = logging.getLogger("trainerd.worker.data")

CACHE = "tokens"
IGNORE = -100


class DataError(Exception):
    """The file cannot be trained as it is; says which lines and why (not retryable)."""


@dataclass
class Tokenized:
    input_ids: np.ndarray  # int32, all examples concatenated
    trainable: np.ndarray  # uint8, 1 where the token is a training target
    offsets: np.ndarray  # int64, n + 1 boundaries into input_ids
    lines: np.ndarray  # int32, source line of each example (for messages that cite lines)
    dropped: int = 0
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _render_ids(tokenizer: Any, msgs: list[dict], **kw: Any) -> list[int]:
    return list(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)["input_ids"])


def tokenize_example(obj: dict, tokenizer: Any) -> tuple[list[int], list[int]]:
    """(input_ids, trainable mask) of one validated example."""
    if "messages" in obj:
        msgs = [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]
        template = tokenizer.chat_template or ""
        if "{% generation %}" in template or "{%- generation %}" in template:
            out = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            return list(out["input_ids"]), [int(x) for x in out["assistant_masks"]]
        return _mask_by_prefix(msgs, tokenizer)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if "prompt" in obj:
        p = tokenizer(obj["prompt"], add_special_tokens=False)["input_ids"]
        c = tokenizer(obj["completion"], add_special_tokens=False)["input_ids"] + eos
        return p + c, [0] * len(p) + [1] * len(c)
    t = tokenizer(obj["text"], add_special_tokens=False)["input_ids"] + eos
    return t, [1] * len(t)


def _mask_by_prefix(msgs: list[dict], tokenizer: Any) -> tuple[list[int], list[int]]:
    full = _render_ids(tokenizer, msgs)
    mask = [0] * len(full)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = _render_ids(tokenizer, msgs[:i], add_generation_prompt=True) if i else \
            _render_ids(tokenizer, [], add_generation_prompt=True)
        upto = _render_ids(tokenizer, msgs[: i + 1])
        if upto[: len(before)] != before or full[: len(upto)] != upto:
            raise DataError(
                "the model's chat template renders a conversation differently from its prefixes, "
                "so assistant tokens cannot be located; use a template with {% generation %} markers"
            )
        end = len(upto)
        eos = tokenizer.eos_token_id
        span = upto[len(before):]
        if eos is not None and eos in span:  # stop at the turn's end marker, not the separator after it
            end = len(before) + len(span) - span[::-1].index(eos)
        for j in range(len(before), end):
            mask[j] = 1
    return full, mask


def fingerprint(tokenizer: Any, cfg: TrainConfig, data_sha: str) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    h.update((tokenizer.chat_template or "").encode())
    h.update(f"{cfg.max_seq_len}|{cfg.overlength}|{data_sha}".encode())
    return h.hexdigest()


def tokenize_file(path: Path, tokenizer: Any, cfg: TrainConfig) -> Tokenized:
    """A validated file, tokenized into arrays in memory (small sets: replay, tests)."""
    out = TokenWriter()
    dropped, truncated = _tokenize_into(out, path, tokenizer, cfg)
    return Tokenized(*out.finish(), dropped, truncated)


def _tokenize_into(out: TokenWriter, path: Path, tokenizer: Any, cfg: TrainConfig) -> tuple[int, int]:
    """Stream a validated file's examples into `out`; (dropped, truncated). Raises
    DataError naming the lines at fault."""
    too_long: list[str] = []
    n_too_long = dropped = truncated = 0
    with open(path, "rb") as f:
        for n, raw in iter_lines(f):
            if raw is None:
                raise DataError(f"line {n}: longer than the validator's line limit")
            if not raw.strip():
                continue
            obj = json.loads(raw.decode("utf-8"))
            fmt, reason = example_format(obj)
            if fmt is None:  # validated at intake; a changed file is still caught here
                raise DataError(f"line {n}: {reason}")
            x, m = tokenize_example(obj, tokenizer)
            if not any(m):
                raise DataError(f"line {n}: no trainable tokens after rendering with the chat template")
            if len(x) > cfg.max_seq_len:
                n_too_long += 1
                if cfg.overlength == "fail":
                    if len(too_long) < MAX_ERRORS:
                        too_long.append(f"line {n} ({len(x)} tokens)")
                    continue
                if cfg.overlength == "drop":
                    dropped += 1
                    continue
                x, m = x[: cfg.max_seq_len], m[: cfg.max_seq_len]
                if not any(m):
                    dropped += 1
                    continue
                truncated += 1
            out.add(x, m, n)
    if too_long:
        more = f" and {n_too_long - len(too_long)} more" if n_too_long > len(too_long) else ""
        raise DataError(
            f"{n_too_long} example(s) longer than train.max_seq_len = {cfg.max_seq_len} tokens: "
            f"{', '.join(too_long)}{more}. Shorten them, raise max_seq_len, or set "
            "train.overlength = \"drop\" or \"truncate\""
        )
    if len(out) == 0:
        raise DataError("no trainable examples are left (all were dropped as over-length)")
    return dropped, truncated


def prepare(job_dir: Path, tokenizer: Any, cfg: TrainConfig, data_sha: str,
            replay: Path | None = None, replay_sha: str = "") -> Tokenized:
    """Tokenize the job once (with its replay examples, if any); later attempts load the
    verified cache."""
    cache = job_dir / CACHE
    fp = fingerprint(tokenizer, cfg, data_sha + replay_sha)
    try:
        man = atomic.verify_manifest(cache)
        if man.get("fingerprint") == fp and tokcache.is_cache(cache):
            return Tokenized(*tokcache.load(cache), dropped=man["dropped"], truncated=man["truncated"])
        log.info("tokenized cache is for another tokenizer, config or format; rebuilding")
    except atomic.ManifestError:
        pass
    tmp = job_dir / (atomic.TMP_PREFIX + CACHE)
    shutil.rmtree(tmp, ignore_errors=True)
    # Streamed into memory-mapped files (worker/tokcache.py): RSS stays flat with file size.
    extra = _replayed(replay, tokenizer, cfg) if replay is not None else None
    writer = TokenWriter(tmp)
    try:
        dropped, truncated = _tokenize_into(writer, job_dir / DATA, tokenizer, cfg)
        if extra is not None:  # after the job's own; the job's data order mixes them in
            writer.extend(extra.input_ids, extra.trainable, extra.lengths(), -extra.lines)
        n = len(writer)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    atomic.write_manifest(tmp, {"fingerprint": fp, "dropped": dropped, "truncated": truncated, "examples": n})
    shutil.rmtree(cache, ignore_errors=True)
    atomic.rename(tmp, cache)
    return Tokenized(*tokcache.load(cache), dropped=dropped, truncated=truncated)


def _replayed(path: Path, tokenizer: Any, cfg: TrainConfig) -> Tokenized | None:
    """Replayed examples (trainerd.lifecycle.replay_for_job), tokenized in memory (a small,
    bounded set), or None when they cannot be used. Over-length ones are dropped whatever
    train.overlength says (not this file's fault). In the cache their `lines` are negative:
    -n is line n of replay.jsonl."""
    try:
        return tokenize_file(path, tokenizer, cfg.model_copy(update={"overlength": "drop"}))
    except DataError as e:
        log.warning("replayed examples not used: %s", e)
        return None


def data_order(n: int, seed: int) -> np.ndarray:
    """The job's fixed data order: a permutation from its seed, identical on every attempt."""
    return np.random.default_rng(seed).permutation(n)


class JobDataset(torch.utils.data.Dataset):
    """Examples in the job's order; item k is built only when a batch asks for it."""

    def __init__(self, tok: Tokenized, order: np.ndarray):
        self.tok = tok
        self.order = order
        self.examples = len(order)  # real examples; len(self) adds fillers
        self.fillers = 0
        self.filler_id = 0

    def pad_to_multiple(self, multiple: int, token_id: int) -> None:
        """Append one-token, label-free items up to a multiple of `multiple`: they add no
        loss and no gradient (labels are -100), and keep every rank of a group in step."""
        self.fillers = -self.examples % multiple
        self.filler_id = token_id

    def __len__(self) -> int:
        return self.examples + self.fillers

    def __getitem__(self, k: int) -> dict[str, list[int]]:
        if k >= self.examples:
            return {"input_ids": [self.filler_id], "labels": [IGNORE]}
        i = int(self.order[k])
        s, e = int(self.tok.offsets[i]), int(self.tok.offsets[i + 1])
        ids = self.tok.input_ids[s:e]
        labels = np.where(self.tok.trainable[s:e] == 1, ids, IGNORE)
        return {"input_ids": ids.tolist(), "labels": labels.tolist()}

    def tokens_before(self) -> np.ndarray:
        """Cumulative real tokens in training order: tokens_before()[k] = tokens of items < k."""
        lengths = self.tok.lengths()[self.order]
        return np.concatenate([[0], np.cumsum(lengths)])


def _stats(xs: list[int]) -> dict[str, float]:
    if not xs:
        return {"min": 0, "mean": 0.0, "p95": 0, "max": 0}
    a = np.asarray(xs)
    return {"min": int(a.min()), "mean": round(float(a.mean()), 1), "p95": int(np.percentile(a, 95)),
            "max": int(a.max())}


def token_report(path: Path, tokenizer: Any, cfg: TrainConfig) -> dict[str, Any]:
    """Token lengths of a file's valid examples as the worker would render them: prompt
    (masked) and trained tokens, and how many exceed train.max_seq_len."""
    prompt: list[int] = []
    trained: list[int] = []
    over = 0
    with open(path, "rb") as f:
        for _n, raw in iter_lines(f):
            if raw is None or not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if example_format(obj)[0] is None:
                continue
            ids, mask = tokenize_example(obj, tokenizer)
            t = sum(mask)
            prompt.append(len(ids) - t)
            trained.append(t)
            over += len(ids) > cfg.max_seq_len
    n = len(trained)
    return {"prompt_tokens": _stats(prompt), "trained_tokens": _stats(trained),
            "max_seq_len": cfg.max_seq_len, "overlength_policy": cfg.overlength,
            "over_max_seq_len": over, "over_share": round(over / n, 4) if n else 0.0}
