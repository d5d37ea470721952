"""From data.jsonl to training rows: parse, render, mask, tokenize once, cache, order by seed.

Examples come from trainerd.formats (every accepted format); conversations are rendered
and masked by trainerd.worker.chat, each assistant turn as the model sees it at inference.
An example's work is bounded by characters before it is tokenized (char_limit), so one
huge line costs no more than the longest example allowed. The tokenized job is cached in
the job dir (complete or invisible, with a manifest), so a resumed attempt neither
re-reads nor re-tokenizes; Trainer's sampler-level batch skipping then starts exactly at
the first untrained example. Rows are sequences: `lines` maps each to its source record.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainerd import atomic
from trainerd.config import DataMapConfig, TrainConfig
from trainerd.formats import (
    NO_MAP,
    Chat,
    Example,
    FileKindError,
    FormatError,
    PromptCompletion,
    chars,
    cut,
    decode,
    iter_records,
    parse,
)
from trainerd.jobs import DATA, TOKEN_CACHE
from trainerd.validate import MAX_ERRORS
from trainerd.worker import tokcache
from trainerd.worker.chat import ChatEncoder, TemplateRefused
from trainerd.worker.tokcache import TokenWriter

log = logging.getLogger("trainerd.worker.data")

CACHE = TOKEN_CACHE
REPLAY_CACHE = "tokens-replay"
CACHE_FORMAT = 3  # bump when the cache's meaning changes (2: sequences per turn; 3: memory-mapped)
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
    examples: int = 0  # records of the file (lines or array elements); len() counts sequences

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


_encoders: dict[int, ChatEncoder] = {}


def chat_encoder(tokenizer: Any) -> ChatEncoder:
    """The tokenizer's ChatEncoder, built once (it renders probe turns at construction)."""
    enc = _encoders.get(id(tokenizer))
    if enc is None or enc.tok is not tokenizer:
        enc = _encoders[id(tokenizer)] = ChatEncoder(tokenizer)
    return enc


def encode(ex: Example, tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """(input_ids, trainable mask) of every sequence an example trains: one for raw text,
    one to N for a conversation of N assistant turns (trainerd.worker.chat)."""
    if isinstance(ex, Chat):
        return chat_encoder(tokenizer).encode(ex)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if isinstance(ex, PromptCompletion):
        p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(ex.completion, add_special_tokens=False)["input_ids"] + eos
        return [(p + c, [0] * len(p) + [1] * len(c))]
    t = tokenizer(ex.text, add_special_tokens=False)["input_ids"] + eos
    return [(t, [1] * len(t))]


def tokenize_example(obj: dict, tokenizer: Any, data_map: DataMapConfig = NO_MAP) -> list[tuple[list[int], list[int]]]:
    """encode() of a JSON object in any accepted format (FormatError if it is none)."""
    return encode(parse(obj, data_map), tokenizer)


def char_limit(tokenizer: Any, max_seq_len: int) -> int:
    """Characters beyond which an example cannot fit max_seq_len tokens, whatever it says:
    no token covers more characters than the longest one in the vocabulary. Bounds the
    work (and memory) spent on an example before it is tokenized."""
    longest = max((len(t) for t in tokenizer.get_vocab()), default=16)
    return max_seq_len * max(1, longest)


@dataclass
class _Tally:
    """What tokenize_file saw; the over-length policy's counts go to job.json and status."""

    examples: int = 0
    too_long: list[str] = field(default_factory=list)
    n_too_long: int = 0
    dropped: int = 0  # sequences left out: over-length under "drop", or prompt alone too long
    truncated: int = 0


def _over(cfg: TrainConfig, tally: _Tally, where: str) -> None:
    tally.n_too_long += 1
    if cfg.overlength == "fail" and len(tally.too_long) < MAX_ERRORS:
        tally.too_long.append(where)


def tokenize_file(path: Path, tokenizer: Any, cfg: TrainConfig, data_map: DataMapConfig = NO_MAP,
                  name: str = "") -> Tokenized:
    """A file tokenized into arrays in memory (small sets: replay, probes, tests)."""
    out = TokenWriter()
    tally = _tokenize_into(out, path, tokenizer, cfg, data_map, name)
    return Tokenized(*out.finish(), tally.dropped, tally.truncated, tally.examples)


def _tokenize_into(out: TokenWriter, path: Path, tokenizer: Any, cfg: TrainConfig,
                   data_map: DataMapConfig = NO_MAP, name: str = "") -> _Tally:
    """Stream a file's sequences into `out` (memory-mapped files for a job's cache: RSS does
    not grow with the file); raises DataError naming the records at fault."""
    tally = _Tally()
    limit = char_limit(tokenizer, cfg.max_seq_len)
    with open(path, "rb") as f:
        try:
            for rec in iter_records(f, name):
                if rec.raw is not None and not rec.raw.strip():
                    continue
                where = f"{rec.unit} {rec.number}"
                try:
                    ex = parse(decode(rec), data_map)
                except FormatError as e:  # validated at intake; a changed file is still caught here
                    raise DataError(f"{where}: {e}") from None
                tally.examples += 1
                if chars(ex) > limit:  # over any token count: never tokenized whole
                    _over(cfg, tally, f"{where} (over {limit} characters)")
                    if cfg.overlength != "truncate":
                        tally.dropped += cfg.overlength == "drop"
                        continue
                    cut_ex = cut(ex, limit)
                    if cut_ex is None:
                        tally.dropped += 1
                        continue
                    ex = cut_ex
                try:
                    seqs = encode(ex, tokenizer)
                except TemplateRefused as e:
                    raise DataError(f"{where}: {e}") from None
                for x, m in seqs:
                    if not any(m):
                        raise DataError(f"{where}: no trainable tokens after rendering with the chat template")
                    if len(x) > cfg.max_seq_len:
                        _over(cfg, tally, f"{where} ({len(x)} tokens)")
                        if cfg.overlength != "truncate":
                            tally.dropped += cfg.overlength == "drop"
                            continue
                        x, m = x[: cfg.max_seq_len], m[: cfg.max_seq_len]
                        if not any(m):  # the prompt alone fills max_seq_len: nothing to train
                            tally.dropped += 1
                            continue
                        tally.truncated += 1
                    out.add(x, m, rec.number)
        except FileKindError as e:
            raise DataError(str(e)) from None
    if tally.too_long:
        more = f" and {tally.n_too_long - len(tally.too_long)} more" if tally.n_too_long > len(tally.too_long) else ""
        raise DataError(
            f"{tally.n_too_long} example(s) longer than train.max_seq_len = {cfg.max_seq_len} tokens: "
            f"{', '.join(tally.too_long)}{more}. Shorten them, raise max_seq_len, or set "
            "train.overlength = \"drop\" or \"truncate\""
        )
    if len(out) == 0:
        raise DataError(f"no trainable examples are left: all {tally.examples} were dropped as longer than "
                        f"train.max_seq_len = {cfg.max_seq_len} tokens; shorten them or raise max_seq_len"
                        if tally.examples else "the file has no examples")
    return tally


def fingerprint(tokenizer: Any, cfg: TrainConfig, data_sha: str, data_map: DataMapConfig = NO_MAP) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    h.update((tokenizer.chat_template or "").encode())
    h.update(f"{CACHE_FORMAT}|{cfg.max_seq_len}|{cfg.overlength}|{data_sha}|{data_map.model_dump_json()}".encode())
    return h.hexdigest()


def _cached(cache: Path, fp: str, source: Path, tokenizer: Any, cfg: TrainConfig,
            data_map: DataMapConfig, name: str = "") -> Tokenized:
    """The verified cache at `cache` if it has this fingerprint, else `source` tokenized
    into it, streamed (complete or invisible, with a manifest; worker/tokcache.py)."""
    try:
        man = atomic.verify_manifest(cache)
        if man.get("fingerprint") == fp and tokcache.is_cache(cache):
            return Tokenized(*tokcache.load(cache), dropped=man["dropped"], truncated=man["truncated"],
                             examples=man.get("examples", 0))
        log.info("%s is for another tokenizer, config or format; rebuilding", cache.name)
    except atomic.ManifestError:
        pass
    tmp = cache.with_name(atomic.TMP_PREFIX + cache.name)
    shutil.rmtree(tmp, ignore_errors=True)
    writer = TokenWriter(tmp)
    try:
        tally = _tokenize_into(writer, source, tokenizer, cfg, data_map, name)
        arrays = writer.finish()
    except BaseException:
        writer.abort()
        raise
    atomic.write_manifest(tmp, {"fingerprint": fp, "dropped": tally.dropped, "truncated": tally.truncated,
                                "examples": tally.examples, "sequences": len(writer),
                                "tokens": int(arrays[2][-1])})
    shutil.rmtree(cache, ignore_errors=True)
    atomic.rename(tmp, cache)
    return Tokenized(*tokcache.load(cache), tally.dropped, tally.truncated, tally.examples)


def prepare_data(job_dir: Path, tokenizer: Any, cfg: TrainConfig, data_sha: str,
                 data_map: DataMapConfig = NO_MAP, name: str = "") -> Tokenized:
    """The job's own examples, tokenized once: by the tokenizing stage while the job waits
    (trainerd.worker.tokenize), else by its first attempt; later attempts load the cache."""
    return _cached(job_dir / CACHE, fingerprint(tokenizer, cfg, data_sha, data_map), job_dir / DATA,
                   tokenizer, cfg, data_map, name)


def prepare(job_dir: Path, tokenizer: Any, cfg: TrainConfig, data_sha: str,
            replay: Path | None = None, replay_sha: str = "", data_map: DataMapConfig = NO_MAP,
            name: str = "") -> Tokenized:
    """The job's examples, with its replay examples (if any) after them."""
    tok = prepare_data(job_dir, tokenizer, cfg, data_sha, data_map, name)
    if replay is None:
        return tok
    drop = cfg.model_copy(update={"overlength": "drop"})
    try:
        r = _cached(job_dir / REPLAY_CACHE, fingerprint(tokenizer, drop, replay_sha, data_map), replay,
                    tokenizer, drop, data_map)
    except DataError as e:
        log.warning("replayed examples not used: %s", e)
        return tok
    return with_replay(tok, r)


class _Joined:
    """Two flat token arrays read as one without copying either, so a memory-mapped job
    cache stays mapped when replayed examples join it. Slices are all JobDataset takes."""

    def __init__(self, a: Any, b: Any):
        self.a, self.b, self.n = a, b, len(a)

    def __len__(self) -> int:
        return self.n + len(self.b)

    def __getitem__(self, k: slice) -> np.ndarray:
        s, e, _ = k.indices(len(self))
        if e <= self.n:
            return np.asarray(self.a[s:e])
        if s >= self.n:
            return np.asarray(self.b[s - self.n:e - self.n])
        return np.concatenate([self.a[s:], self.b[:e - self.n]])


def with_replay(tok: Tokenized, r: Tokenized) -> Tokenized:
    """The job's examples followed by replayed ones (trainerd.line.replay.replay_for_job);
    the job's data order then mixes them into the epoch. Over-length replayed examples are
    dropped whatever train.overlength says (not this file's fault). Their `lines` are
    negative: -n is line n of replay.jsonl."""
    return Tokenized(_Joined(tok.input_ids, r.input_ids), _Joined(tok.trainable, r.trainable),  # type: ignore[arg-type]
                     np.concatenate([tok.offsets, r.offsets[1:] + tok.offsets[-1]]),
                     np.concatenate([tok.lines, -r.lines]), tok.dropped, tok.truncated, tok.examples + r.examples)


def data_order(n: int, seed: int) -> np.ndarray:
    """The job's fixed data order: a permutation from its seed, identical on every attempt."""
    return np.random.default_rng(seed).permutation(n)


MEGA_STEPS = 50  # optimizer steps per mega-batch, as transformers' LengthGroupedSampler


def grouped_order(lengths: np.ndarray, seed: int, per_step: int) -> np.ndarray:
    """data_order with each optimizer step's examples of similar lengths: the permutation
    is cut into mega-batches of up to MEGA_STEPS steps (fewer on a small file, so that it
    keeps at least 4), each sorted by length and cut into steps, and the steps of each
    mega-batch shuffled. The examples of a mega-batch stay those of the plain order; only
    who trains beside whom changes. A pure function of (lengths, seed, per_step): every
    attempt of a job sees the same steps, so resume skipping lands exactly where the
    checkpoint stopped. per_step (examples per optimizer step across all ranks) survives the
    out-of-memory fallback, which halves the micro-batch and doubles grad_accum."""
    perm = data_order(len(lengths), seed)
    rng = np.random.default_rng([seed, 1])  # its own stream: the permutation stays data_order's
    mega = per_step * max(1, min(MEGA_STEPS, len(lengths) // (per_step * 4)))
    out = []
    for m in range(0, len(perm), mega):
        block = perm[m:m + mega]
        block = block[np.argsort(-lengths[block], kind="stable")]  # longest first, ties in order
        steps = [block[i:i + per_step] for i in range(0, len(block), per_step)]
        short = [steps.pop()] if len(steps[-1]) < per_step else []  # the epoch's ragged end stays last
        out += [steps[k] for k in rng.permutation(len(steps))] + short
    return np.concatenate(out) if out else perm


def training_order(lengths: np.ndarray, seed: int, per_step: int, group_by_length: bool) -> np.ndarray:
    """The order a job trains its sequences in (train.group_by_length chooses which)."""
    return grouped_order(lengths, seed, per_step) if group_by_length else data_order(len(lengths), seed)


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


def token_report(tok: Tokenized, cfg: TrainConfig) -> dict[str, Any]:
    """Token lengths of the sequences a file trains, as the worker renders them: prompt
    (masked) and trained tokens, and what the over-length policy did."""
    lengths = tok.lengths()
    trained = [int(tok.trainable[s:e].sum()) for s, e in zip(tok.offsets[:-1], tok.offsets[1:], strict=True)]
    prompt = [int(n) - t for n, t in zip(lengths, trained, strict=True)]
    return {"examples": tok.examples, "sequences": len(tok), "tokens": int(tok.offsets[-1]),
            "prompt_tokens": _stats(prompt), "trained_tokens": _stats(trained),
            "max_seq_len": cfg.max_seq_len, "overlength_policy": cfg.overlength,
            "dropped": tok.dropped, "truncated": tok.truncated}
