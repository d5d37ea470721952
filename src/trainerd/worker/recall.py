"""Scoring a job's result against its parent: the gate's numbers and the forgetting matrix.

In the training worker, never beside training: the parent is scored on the freshly loaded
model before the first optimizer step (only what its manifest does not already hold), the
candidate after the last one, before publishing. Both on rank 0 alone, while the other
ranks of a group wait. Every forward runs under evals.isolated (no grad, eval mode, RNG
states put back), so scoring never changes what is trained.

- probe: the probe set's scores (evals.evaluate), reusing the end-of-job eval of this
  attempt when it is complete;
- recall: loss on the recall samples (models/recall/<job>.jsonl) of the last
  eval.recall_jobs jobs of the line: the job's own always; the earlier jobs' when the
  schedule (eval.recall_budget, trainerd.line.forgetting) says this version gets a full
  row. An earlier job's "before" is its newest score on the parent's chain, not a new
  forward of the parent: the parent is only scored on what nothing has scored yet.

A scoring error or time-out is written down as the gate's `problem` (result "unknown"),
never a pass.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import random
import time
from pathlib import Path
from typing import Any

from trainerd import atomic, dircache, gate, inbox
from trainerd.config import Config
from trainerd.formats import iter_records
from trainerd.jobs import DATA, JobMeta, token_counts
from trainerd.line import forgetting
from trainerd.line.refs import ModelRef
from trainerd.paths import PRIORITIES, Layout
from trainerd.worker import evals

log = logging.getLogger("trainerd.worker.recall")

PARENT_SCORES = "parent-scores.json"  # in the job dir: a resumed attempt does not re-score
PROBE_KEYS = ("loss", "exact_match", "similarity", "complete", "stopped_by", "error", "probe_sha",
              "examples", "generated", "groups", "seconds")


def write_sample(layout: Layout, job_dir: Path, meta: JobMeta, n: int) -> Path | None:
    """The job's recall sample: n of its non-blank lines, chosen by its id (the same on every
    attempt), copied to models/recall/. Written once; the job still trains on all its lines."""
    dest = forgetting.recall_path(layout, meta.id)
    if n <= 0 or dest.is_file():
        return dest if dest.is_file() else None
    rng = random.Random(f"recall:{meta.id}")
    heap: list[tuple[float, int, bytes]] = []  # reservoir by random key: bounded memory
    with open(job_dir / DATA, "rb") as f:
        for rec in iter_records(f, meta.original_name):
            if rec.raw is None or not rec.raw.strip():
                continue
            item = (rng.random(), rec.number, rec.raw.strip())
            if len(heap) < n:
                heapq.heappush(heap, item)
            elif item[0] > heap[0][0]:
                heapq.heapreplace(heap, item)
    if not heap:
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(dest, b"".join(raw + b"\n" for _, _, raw in sorted(heap, key=lambda x: x[1])))
    return dest


def waiting_jobs(layout: Layout) -> int:
    """Jobs queued behind this one, and inbox files about to be: the work a full recall row
    would delay. Read-only, by the rules the daemon uses (the queue's module is its own):
    the inbox's delivery rules, so that inbox/high/ and files rejected in place (a note
    beside them) are not work."""
    n = 0
    for p in PRIORITIES:
        with contextlib.suppress(OSError):
            n += dircache.count(layout.queued(p))
    entries = inbox.scan(layout.inbox, lambda _d, _e: None)
    return n + sum(1 for e in entries if not e.too_deep and not inbox.note_path(e.path).exists())


def _probe_part(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = {k: row.get(k) for k in PROBE_KEYS if k in row}
    out["sha"] = row.get("probe_sha")
    out["complete"] = bool(row.get("complete")) and "error" not in row
    return out


class Scorer:
    """Scores of one job's parent (before training) and candidate (after)."""

    def __init__(self, layout: Layout, cfg: Config, meta: JobMeta, parent: ModelRef, tokenizer: Any,
                 job_dir: Path, probe: evals.Probe | None):
        self.layout, self.cfg, self.meta, self.parent, self.job_dir = layout, cfg, meta, parent, job_dir
        self.tokenizer, self.probe = tokenizer, probe
        self.problem: str | None = None
        self.parent_scores: dict[str, Any] = {"parent": parent.version, "probe": None, "recall": {}}
        self.sets: dict[str, evals.Probe] = {}
        self.recall_groups: dict[str, Any] = {}
        parent_name = None if parent.version == "base" else parent.version
        for job in forgetting.window(layout, parent_name, meta.id, cfg.eval.recall_jobs):
            p = evals.load_probe(forgetting.recall_path(layout, job), tokenizer, cfg.train.max_seq_len, 0,
                                 cfg.data.map, cfg.eval.group_by)
            if p is not None:
                self.sets[job] = p

    def _recall(self, model: Any, jobs: list[str]) -> dict[str, float | None]:
        """Loss per job's sample; per-tag losses (eval.group_by) go to self.recall_groups.
        All the jobs' samples in one pass: packed rows then span jobs, a few forwards for
        the whole window instead of one (or one per example) per job."""
        deadline = time.monotonic() + self.cfg.eval.max_seconds
        out: dict[str, float | None] = {}
        with evals.isolated(model):
            every = [ex for job in jobs for ex in self.sets[job].examples]
            scored = evals.example_losses(model, every, lambda: time.monotonic() >= deadline,
                                          self.cfg.train.packing)
            start = 0
            for job in jobs:
                per = scored[start:start + len(self.sets[job].examples)]
                start += len(self.sets[job].examples)
                tokens = sum(n for _, n in per)
                if len(per) < len(self.sets[job].examples) or not tokens:
                    self.problem = self.problem or f"recall eval timed out after {self.cfg.eval.max_seconds:g}s"
                    out[job] = None
                else:
                    out[job] = sum(s for s, _ in per) / tokens
                    groups = evals.groups_of(self.sets[job], per, [])
                    if groups:
                        self.recall_groups[job] = groups
        return out

    def _probe(self, model: Any) -> dict[str, Any] | None:
        if self.probe is None:
            return None
        e = self.cfg.eval
        return _probe_part(evals.evaluate(model, self.tokenizer, self.probe, e.max_new_tokens, e.max_seconds,
                                          packed=self.cfg.train.packing))

    def before(self, model: Any) -> dict[str, Any]:
        """The parent's scores: from its manifest where it has them for this probe set and
        these jobs, the rest measured now on `model` (the parent, not yet trained)."""
        path = self.job_dir / PARENT_SCORES
        try:
            saved = atomic.read_json(path)
            if saved.get("parent") == self.parent.version and set(saved["recall"]) >= set(self.sets):
                self.parent_scores = saved
                return saved
        except (OSError, ValueError, KeyError, AttributeError):
            pass
        probe = (self.parent.manifest.get("scores") or {}).get("probe")
        name = None if self.parent.version == "base" else self.parent.version
        last = forgetting.last_scores(self.layout, name, list(self.sets))
        recall = {j: loss for j, (loss, _) in last.items()}
        came_from = {j: v for j, (_, v) in last.items() if v != self.parent.version}
        try:
            if self.probe is not None and not (probe and probe.get("complete") and probe.get("sha") == self.probe.sha):
                probe = self._probe(model)
            recall.update(self._recall(model, [j for j in self.sets if j not in recall]))  # the own job, mostly
        except Exception as e:  # e.g. CUDA OOM: the gate says unknown, training goes on
            log.warning("scoring the parent %s failed", self.parent.version, exc_info=True)
            self.problem = f"scoring {self.parent.version} failed: {type(e).__name__}: {e}"
            probe, recall, came_from = None, {}, {}
        self.parent_scores = {"parent": self.parent.version, "probe": probe if self.probe else None,
                              "recall": recall, **({"recall_from": came_from} if came_from else {})}
        if self.problem is None:
            atomic.write_json(path, self.parent_scores)
        return self.parent_scores

    def after(self, model: Any, final_row: dict[str, Any] | None) -> dict[str, Any]:
        """Manifest fields of the candidate: its scores, its parent's, and the gate's record."""
        try:
            probe = _probe_part(final_row)
            if self.probe is not None and not (probe and probe["complete"]):
                probe = self._probe(model)
            self.recall_groups = {}
            schedule = self._schedule() if self.sets else None  # None: eval.recall_examples = 0
            recall = self._recall(model, [j for j in self.sets if (schedule or {}).get("row") == "full"
                                          or j == self.meta.id])
        except Exception as e:
            log.warning("scoring the new version failed", exc_info=True)
            self.problem = self.problem or f"scoring the new version failed: {type(e).__name__}: {e}"
            probe, recall, schedule = None, {}, None
        scores = {"probe": probe if self.probe else None, "recall": recall,
                  **({"recall_groups": self.recall_groups} if self.recall_groups else {}),
                  **({"recall_schedule": schedule} if schedule else {})}
        cand = {**scores, "job": self.meta.id}
        g = gate.decide(self.cfg.gate, cand, self.parent_scores, self.parent.version, self.problem)
        log.info("gate (%s): %s", g["mode"], g["verdict"])
        return {"scores": scores, "parent_scores": self.parent_scores, "gate": g}

    def _schedule(self) -> dict[str, Any]:
        """Whether this version is scored on the earlier jobs' samples (a full row) or on
        its own job's alone, by trainerd.line.forgetting.full_row."""
        earlier = [j for j in self.sets if j != self.meta.id]
        cost = sum(len(ids) for j in earlier for ids, _ in self.sets[j].examples)
        trained = (token_counts(self.job_dir) or {}).get("tokens", 0)
        waiting = waiting_jobs(self.layout)
        full, credit, why = forgetting.full_row(forgetting.credit_of(self.parent.manifest), trained, cost,
                                                self.cfg.eval.recall_budget, waiting)
        if earlier:
            log.info("recall: %s (%s)", f"all {len(earlier) + 1} jobs' samples" if full else "own sample only", why)
        return {"row": "full" if full else "own", "why": why, "credit_tokens": round(credit),
                "cost_tokens": cost, "trained_tokens": trained, "waiting": waiting}


def start(layout: Layout, cfg: Config, meta: JobMeta, parent: ModelRef, tokenizer: Any, job_dir: Path,
          model: Any, probe: evals.Probe | None) -> Scorer:
    """Before the first step: the job's recall sample written, the parent scored."""
    try:
        write_sample(layout, job_dir, meta, cfg.eval.recall_examples)
    except OSError as e:  # the matrix misses this job; training must not fail for it
        log.warning("recall sample of %s not written: %s", meta.id, e)
    scorer = Scorer(layout, cfg, meta, parent, tokenizer, job_dir, probe)
    scorer.before(model)
    return scorer
