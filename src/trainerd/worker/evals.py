"""Probe evals: how the model does on a fixed probe set, every N steps and at job end.

The probe set is the user's (`[eval] probe_file`, a JSONL in the base dir, in the training
formats). An eval computes the loss on it exactly as training does (tokenize_example: the
same rendering and masks, the model's own loss) and, for up to K examples, a greedy answer
to the prompt part (everything before the last assistant turn, or the `prompt`) compared
with the expected answer: exact match and a difflib similarity ratio.

An eval must not change what training produces: it runs under no_grad in eval mode, puts
train mode back, and saves and restores the RNG states, so a job with evals ends with the
same weights as one without [test_evals: same_weights]. It is bounded by max_seconds and
by a stop request: it stops early and records how many examples it got through.

Rows go to the job's evals.jsonl (like metrics.jsonl); the supervisor copies an attempt's
rows into state.db when the attempt ends, so SQLite has one writer.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from trainerd import formats as F
from trainerd.config import Config, DataMapConfig
from trainerd.jobs import EVALS
from trainerd.paths import Layout
from trainerd.worker import heartbeat
from trainerd.worker.chat import TemplateRefused
from trainerd.worker.data import chat_encoder, encode

if TYPE_CHECKING:
    from trainerd.worker.main import StopFlag

log = logging.getLogger("trainerd.worker.evals")

SAMPLE_CHARS = 300  # expected/generated text kept per sample in a row (state.db stays small)


@dataclass
class Probe:
    """The probe set, tokenized once per attempt."""

    sha: str  # of the file: a changed probe set shows as a break in the trend
    examples: list[tuple[list[int], list[int]]]  # (input_ids, trainable mask), for the loss
    prompts: list[tuple[int, list[int], str]] = field(default_factory=list)  # (line, prompt ids, expected)
    lines: list[int] = field(default_factory=list)  # the probe file's record of each example
    # Tags per loss example and per prompt ({key: value} for eval.group_by), parallel lists.
    example_tags: list[dict[str, str]] = field(default_factory=list)
    prompt_tags: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


def _prompt(ex: F.Example, tokenizer: Any) -> tuple[list[int], str] | None:
    """(prompt ids, expected answer): the conversation before its last assistant turn,
    rendered with the generation prompt, or a prompt/completion pair; None for `text`."""
    if isinstance(ex, F.Chat):
        ids, turn = chat_encoder(tokenizer).prompt(ex)
        return ids, turn.get("content") or ""
    if isinstance(ex, F.PromptCompletion):
        return tokenizer(ex.prompt, add_special_tokens=False)["input_ids"], ex.completion
    return None


def tags_of(obj: Any, group_by: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The example's value for each group_by key: at the top level (the original daemon's
    files), else under `metadata`. Missing keys are left out (the example counts overall only)."""
    out: dict[str, str] = {}
    if not isinstance(obj, dict):
        return out
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    for key in group_by:
        v = obj.get(key, meta.get(key))
        if v is not None and not isinstance(v, dict | list):
            out[key] = str(v)
    return out


def load_probe(path: Path, tokenizer: Any, max_seq_len: int, k: int,
               data_map: DataMapConfig = F.NO_MAP, group_by: list[str] | tuple[str, ...] = ()) -> Probe | None:
    """The probe set at `path`, or None when there is none. Lines that are not valid
    examples, or longer than train.max_seq_len, are left out and named in the log: a bad
    probe line must never fail the job it observes."""
    try:
        raw_file = path.read_bytes()
    except FileNotFoundError:
        return None
    bad: list[str] = []
    probe = Probe(hashlib.sha256(raw_file).hexdigest()[:16], [])
    with open(path, "rb") as f:
        try:
            records = list(F.iter_records(f))
        except F.FileKindError as e:
            log.warning("probe set %s not used: %s", path, e)
            return None
    for rec in records:
        if rec.raw is not None and not rec.raw.strip():
            continue
        n = rec.number
        try:
            obj = F.decode(rec)
            ex = F.parse(obj, data_map)
            seqs = encode(ex, tokenizer)
        except (F.FormatError, TemplateRefused) as e:
            bad.append(f"{rec.unit} {n} ({e})")
            continue
        kept = 0
        for ids, mask in seqs:
            if len(ids) > max_seq_len or not any(mask):
                bad.append(f"{rec.unit} {n} ({len(ids)} tokens > train.max_seq_len)" if any(mask)
                           else f"{rec.unit} {n} (nothing to score)")
                continue
            probe.examples.append((ids, mask))
            probe.lines.append(n)
            probe.example_tags.append(tags_of(obj, group_by))
            kept += 1
        p = _prompt(ex, tokenizer) if kept and len(probe.prompts) < k else None
        if p is not None:
            probe.prompts.append((n, *p))
            probe.prompt_tags.append(tags_of(obj, group_by))
    if bad:
        log.warning("probe set %s: left out %d line(s): %s", path, len(bad), ", ".join(bad[:10]))
    if not probe.examples:
        log.warning("probe set %s has no usable example; no probe evals", path)
        return None
    return probe


@contextlib.contextmanager
def isolated(model: Any) -> Iterator[None]:
    """Eval mode, no autograd, and RNG states put back afterwards: training goes on as if
    nothing had happened (dropout masks included)."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Tokens that end an answer: the tokenizer's EOS and the model's generation EOS (chat
    models often end a turn with a token other than the tokenizer's EOS)."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return sorted(i for i in ids if i is not None)


def example_nll(model: Any, ids: list[int], mask: list[int], device: Any) -> tuple[float, int]:
    """(summed loss, scored tokens) of one example, as training computes it (the model's
    own loss, a mean over the shifted targets, times their number). Call under no_grad."""
    x = torch.tensor([ids], device=device)
    labels = torch.tensor([[i if m else -100 for i, m in zip(ids, mask, strict=True)]], device=device)
    n = int((labels[:, 1:] != -100).sum())
    if not n:
        return 0.0, 0
    return float(model(input_ids=x, labels=labels, use_cache=False).loss) * n, n


def evaluate(model: Any, tokenizer: Any, probe: Probe, max_new_tokens: int, max_seconds: float,
             stop: Any = None, packed: bool = False) -> dict[str, Any]:
    """One eval: probe loss, then greedy answers; stops early past max_seconds or on stop.
    `packed`: the loss in packed rows (train.packing: the model trains on them already)."""
    t0 = time.monotonic()
    deadline = t0 + max_seconds
    device = next(model.parameters()).device

    def out_of_time() -> bool:
        return bool(stop) or time.monotonic() >= deadline

    samples: list[dict[str, Any]] = []
    with isolated(model):
        per = example_losses(model, probe.examples, out_of_time, packed)
        scored = len(per)
        tokens = sum(n for _, n in per)
        loss_seconds = time.monotonic() - t0
        stop_ids = _stop_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids or [0])[0]
        for line, prompt, expected in probe.prompts:
            if out_of_time():
                break
            x = torch.tensor([prompt], device=device)
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stop_ids or None, pad_token_id=pad,
                                 use_cache=True, max_time=max(0.1, deadline - time.monotonic()))
            new = out[0, x.shape[1]:].tolist()
            cut = next((j for j, t in enumerate(new) if t in stop_ids), len(new))
            answer = tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
            want = expected.strip()
            samples.append({"line": line, "exact": answer == want,
                            "similarity": round(difflib.SequenceMatcher(None, answer, want).ratio(), 4),
                            "expected": want[:SAMPLE_CHARS], "generated": answer[:SAMPLE_CHARS]})
            heartbeat.progress()
    done = scored == len(probe.examples) and len(samples) == len(probe.prompts)
    return {
        **_scores(per, samples),
        "groups": groups_of(probe, per, samples),
        "examples": scored, "tokens": tokens, "generated": len(samples),
        "probe_examples": len(probe), "probe_prompts": len(probe.prompts), "probe_sha": probe.sha,
        "complete": done, "stopped_by": None if done else ("stop" if stop else "max_seconds"),
        "seconds": round(time.monotonic() - t0, 3), "loss_seconds": round(loss_seconds, 3), "samples": samples,
    }


def example_losses(model: Any, examples: list[tuple[list[int], list[int]]],
                   out_of_time: Any = lambda: False, packed: bool = False) -> list[tuple[float, int]]:
    """(summed token NLL, scored tokens) per example, in order, until out_of_time() says stop.
    The caller holds isolated(model). No padding to get wrong: one example per forward, or
    (`packed`, for a model that trains on packed rows) consecutive examples end to end in
    one row of at most ROW_TOKENS tokens and PACKED_LOGITS logits, so that the logits stay
    as small as one long example's would (a batch x a large vocabulary would not fit beside
    training). Logits only where a scored token is predicted, as training computes them
    (worker/collate.py): on a 151,936-id vocabulary the prompt's logits were a quarter of the
    eval's time. One forward per example was most of a small job's eval time (bench/per_job.py)."""
    from trainerd.worker.collate import keeps_logits

    device = next(model.parameters()).device
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
    trim = packed and keeps_logits(model)
    row_logits = PACKED_LOGITS // vocab if packed and vocab else 0

    def logits(ex: tuple[list[int], list[int]]) -> int:
        return sum(1 for m in ex[1][1:] if m) if trim else len(ex[0])

    out: list[tuple[float, int]] = []
    i = 0
    while i < len(examples) and not out_of_time():
        j, tokens, kept = i + 1, len(examples[i][0]), logits(examples[i])
        while j < len(examples) and tokens + len(examples[j][0]) <= ROW_TOKENS and \
                kept + logits(examples[j]) <= row_logits:
            tokens, kept = tokens + len(examples[j][0]), kept + logits(examples[j])
            j += 1
        if j - i == 1 and not trim:
            out.append(example_nll(model, *examples[i], device))
        else:
            out.extend(packed_nll(model, examples[i:j], device, trim))
        heartbeat.progress()  # a long probe set is work, not a stall (trainerd.stall)
        i = j
    return out


PACKED_LOGITS = 2**25  # logits elements of one packed eval row: 128 MiB in fp32
ROW_TOKENS = 4096  # tokens of one packed eval row: bounds the activations and the attention mask


def packed_nll(model: Any, examples: list[tuple[list[int], list[int]]], device: Any,
               trim: bool = False) -> list[tuple[float, int]]:
    """example_nll of each example, from one forward of them packed in one row: position
    ids restart at every example, as in the packed training batches, so no token attends
    across examples (the attention implementations that train on packed rows split them).
    `trim`: the model computes logits only at the positions that predict a scored token."""
    ids = torch.tensor([[t for e, _ in examples for t in e]], device=device)
    pos = torch.tensor([[p for e, _ in examples for p in range(len(e))]], device=device)
    # Position k predicts token k + 1: its target, or -100 where that token is not scored
    # (and at each example's last token, which predicts the next example's first).
    targets = [t if m else -100 for e, mask in examples for t, m in zip([*e[1:], 0], [*mask[1:], 0], strict=True)]
    target = torch.tensor(targets, dtype=torch.long, device=device)
    keep = torch.nonzero(target != -100).flatten()
    if trim:
        if not len(keep):
            return [(0.0, 0)] * len(examples)
        logits = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=keep).logits[0].float()
        target = target[keep]
    else:
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="none")
    # Each position's NLL to its example: the kept (or all) positions in order, per example.
    owner = torch.tensor([k for k, (e, _) in enumerate(examples) for _ in e], device=device)
    owner = owner[keep] if trim else owner
    sums = torch.zeros(len(examples), dtype=nll.dtype, device=device).index_add_(0, owner, nll)
    counts = torch.bincount(owner[target != -100], minlength=len(examples))
    return [(float(s), int(n)) for s, n in zip(sums.tolist(), counts.tolist(), strict=True)]


def _scores(per: list[tuple[float, int]], samples: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(n for _, n in per)
    return {
        "loss": sum(s for s, _ in per) / tokens if tokens else None,
        "exact_match": sum(s["exact"] for s in samples) / len(samples) if samples else None,
        "similarity": sum(s["similarity"] for s in samples) / len(samples) if samples else None,
    }


def groups_of(probe: Probe, per: list[tuple[float, int]], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """{key: {value: scores}} for eval.group_by: the same measures as overall, per tag value."""
    out: dict[str, dict[str, Any]] = {}
    keys = {k for t in probe.example_tags + probe.prompt_tags for k in t}
    for key in sorted(keys):
        values = {t[key] for t in probe.example_tags + probe.prompt_tags if key in t}
        out[key] = {}
        for v in sorted(values):
            p = [x for x, t in zip(per, probe.example_tags, strict=False) if t.get(key) == v]
            s = [x for x, t in zip(samples, probe.prompt_tags, strict=False) if t.get(key) == v]
            out[key][v] = {**_scores(p, s), "examples": len(p), "generated": len(s)}
    return out


class ProbeEval(TrainerCallback):
    """Evaluates on rank 0 after every `every_steps`-th optimizer step and after the last
    one (on_step_end: before that step's checkpoint and before publishing).

    Rank 0 alone runs the unwrapped model while the other ranks wait at the next step: fine
    with DDP, where every rank holds the whole model; a sharded model (FSDP, ZeRO-3) would
    need every rank in each forward. An eval that fails is a log line and a row with its
    error, never a failed job: it observes training, it is not part of it.
    """

    def __init__(self, job_dir: Path, attempt: int, probe: Probe, tokenizer: Any, cfg: Config,
                 stop: StopFlag):
        self.job_dir, self.attempt, self.probe, self.tokenizer = job_dir, attempt, probe, tokenizer
        self.cfg, self.stop, self.packed = cfg.eval, stop, cfg.train.packing
        self.tb: Any = None  # transformers' TensorBoardCallback, when event files are written
        self.final_row: dict[str, Any] | None = None  # this attempt's end-of-job eval (the gate reuses it)

    def on_step_end(self, args, state, control, model=None, **kw):
        step = state.global_step
        final = step >= state.max_steps
        due = final or (self.cfg.every_steps and step % self.cfg.every_steps == 0)
        if not due or not state.is_world_process_zero or self.stop or model is None:
            return  # a stop request checkpoints now; the eval waits for a later attempt
        row: dict[str, Any] = {"attempt": self.attempt, "step": step, "ts": time.time(), "final": final}
        heartbeat.phase("eval", step)
        try:
            row.update(evaluate(model, self.tokenizer, self.probe, self.cfg.max_new_tokens,
                                self.cfg.max_seconds, self.stop, self.packed))
        except Exception as e:  # e.g. CUDA OOM in generate: isolated() has put training back
            log.warning("probe eval at step %d failed; training goes on", step, exc_info=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            row.update(loss=None, exact_match=None, similarity=None, error=f"{type(e).__name__}: {e}")
        heartbeat.phase("training", step)
        with open(self.job_dir / EVALS, "a") as f:
            f.write(json.dumps(row) + "\n")
        if final:
            self.final_row = row
        if "error" not in row:
            self._report(row)

    def _report(self, row: dict[str, Any]) -> None:
        writer = getattr(self.tb, "tb_writer", None)
        if writer is not None:  # probe scalars beside the training ones
            for key in ("loss", "exact_match", "similarity"):
                if row[key] is not None:
                    writer.add_scalar(f"probe/{key}", row[key], row["step"])
                for tag, values in (row.get("groups") or {}).items():
                    for value, sc in values.items():
                        if sc.get(key) is not None:
                            writer.add_scalar(f"probe_{tag}/{value}/{key}", sc[key], row["step"])
        log.info("probe eval at step %d%s: loss %s, exact %d/%d, similarity %s, %.2fs%s", row["step"],
                 " (end)" if row["final"] else "", _fmt(row["loss"]), sum(s["exact"] for s in row["samples"]),
                 row["generated"], _fmt(row["similarity"]), row["seconds"],
                 "" if row["complete"] else f" (stopped early: {row['examples']}/{len(self.probe)} "
                 f"scored, {row['generated']}/{len(self.probe.prompts)} generated)")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def callback(layout: Layout, cfg: Config, job_dir: Path, attempt: int, tokenizer: Any,
             stop: StopFlag) -> ProbeEval | None:
    """The probe-eval callback for this attempt, or None when there is no probe set."""
    path = layout.base / cfg.eval.probe_file  # an absolute probe_file stays as it is
    heartbeat.phase("eval")  # reading the probe set is the eval's work (and can block on it)
    probe = load_probe(path, tokenizer, cfg.train.max_seq_len, cfg.eval.generate_examples, cfg.data.map,
                       cfg.eval.group_by)
    heartbeat.phase("loading")
    if probe is None:
        return None
    log.info("probe set %s: %d examples, %d for generation; eval %s", path, len(probe), len(probe.prompts),
             f"every {cfg.eval.every_steps} steps and at the end" if cfg.eval.every_steps else "at the end")
    return ProbeEval(job_dir, attempt, probe, tokenizer, cfg, stop)
