"""The forgetting matrix, read from the model line. Torch-free (CLI, supervisor, server).

Each job keeps a fixed recall sample of its own examples in models/recall/<job-id>.jsonl
(a copy: `[retention]` may delete the job's data.jsonl; the examples are still trained).
Each new version is scored on the recall samples of the last `eval.recall_jobs` jobs of its
line (trainerd.worker.recall); the losses are in its manifest:

  scores.recall          {job: loss of this version on that job's sample}     R[version][job]
  parent_scores.recall   {job: loss of the parent on it}, including the new job itself:
                         its "before" (cached from the parent's manifest when it has them)

  parent_scores.recall_from {job: version} where the "before" of an earlier job is not the
                         parent's but an older ancestor's (see the schedule below)

Backward transfer of a version: the mean, over the earlier jobs it was scored on, of
(before - this version's loss). Negative means it forgot (the loss on old jobs rose);
positive, that it helped them. The job's own gain is before - R[v][own job].

The schedule (`eval.recall_budget`, docs/EVALS.md). Every version is scored on its own
job's sample (so is its parent, before training): that costs what training the job's
examples costs, whatever the file sizes. Scoring the earlier jobs' samples is what a burst
of small files would pay again and again (8 samples a version for a file of 8 examples), so
a version gets that full row when nothing waits in the queue (the version the line rests
on is always checked) or when the line has trained enough since the last full row: each
version adds budget x its trained tokens to a credit, and a full row costs the tokens of
the earlier samples. Between full rows an earlier job's "before" is its last score on the
parent's chain, so a full row measures all the forgetting since then, and the gate
compares like with like (the same samples, through the versions in between).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.line.versions import versions
from trainerd.paths import Layout

RECALL_DIR = "recall"


METRIC_VERSIONS = 50  # versions /metrics looks at per scrape


def recall_path(layout: Layout, job_id: str) -> Path:
    return layout.models / RECALL_DIR / f"{job_id}.jsonl"


def _man(layout: Layout, name: str) -> dict[str, Any] | None:
    try:
        m = atomic.read_json(layout.models / name / atomic.MANIFEST)
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


def line_jobs(layout: Layout, version: str | None) -> list[str]:
    """Jobs trained into `version`, oldest first: its own, its parent's, ... to the base
    (through full versions too: a consolidation keeps what its adapter learned)."""
    out: list[str] = []
    seen: set[str] = set()
    name = version
    while name and name != "base" and name not in seen:
        seen.add(name)
        man = _man(layout, name)
        if man is None:
            break
        for j in reversed(man.get("jobs") or []):
            if j.get("id") and j["id"] not in out:
                out.append(j["id"])
        name = man.get("parent")
    return out[::-1]


def window(layout: Layout, parent: str | None, job_id: str, n: int) -> list[str]:
    """The jobs a new version of `job_id` on `parent` is scored on: the last n of the
    line (its own job included) that have a recall sample."""
    jobs = [j for j in line_jobs(layout, parent) if j != job_id] + [job_id]
    return [j for j in jobs if recall_path(layout, j).is_file()][-n:] if n else []


def last_scores(layout: Layout, parent: str | None, jobs: list[str]) -> dict[str, tuple[float, str]]:
    """For each of `jobs`, its newest recall loss on the chain from `parent` back to the
    base, with the version that has it: what a new version is compared with on that job."""
    out: dict[str, tuple[float, str]] = {}
    seen: set[str] = set()
    name = parent
    while name and name != "base" and name not in seen and len(out) < len(jobs):
        seen.add(name)
        man = _man(layout, name)
        if man is None:
            break
        recall = (man.get("scores") or {}).get("recall") or {}
        for j in jobs:
            if j not in out and isinstance(recall.get(j), (int, float)):
                out[j] = (float(recall[j]), name)
        name = man.get("parent")
    return out


def credit_of(man: dict[str, Any] | None) -> float:
    """The scoring credit a version leaves its children (tokens), 0 when it has none."""
    c = (((man or {}).get("scores") or {}).get("recall_schedule") or {}).get("credit_tokens")
    return float(c) if isinstance(c, (int, float)) and c >= 0 else 0.0


def full_row(credit: float, trained_tokens: int, cost_tokens: int, budget: float, waiting: int
             ) -> tuple[bool, float, str]:
    """Whether a new version is scored on the earlier jobs' samples too (the schedule above).
    `credit`: its parent's (tokens); `trained_tokens`: its job's; `cost_tokens`: of the
    earlier samples; `waiting`: jobs queued behind it. Returns (full, credit left, why)."""
    have = credit + budget * max(0, trained_tokens)
    if cost_tokens <= 0:
        return False, have, "no earlier job's sample"
    if not waiting:
        return True, max(0.0, have - cost_tokens), "nothing queued"
    if have >= cost_tokens:
        return True, have - cost_tokens, f"{have:.0f} tokens of credit cover the {cost_tokens}"
    later = f", or once the line has trained {(cost_tokens - have) / budget:.0f} more tokens" if budget else ""
    return False, have, f"{waiting} job(s) queued: scored when nothing waits{later} (eval.recall_budget)"


def version_of_job(layout: Layout, job_id: str) -> tuple[str, dict[str, Any]] | None:
    """The version the job's own publish made (current, held or neither), with its manifest;
    a consolidation that later merged it is not that version."""
    for name in reversed(versions(layout)):
        man = _man(layout, name)
        if man and "consolidated" not in man and any(j.get("id") == job_id for j in man.get("jobs") or []):
            return name, man
    return None


def backward_transfer(man: dict[str, Any]) -> float | None:
    own = _own_job(man)
    now = (man.get("scores") or {}).get("recall") or {}
    before = (man.get("parent_scores") or {}).get("recall") or {}
    common = [j for j in now if j in before and j != own and now[j] is not None and before[j] is not None]
    if not common:
        return None
    return sum(before[j] - now[j] for j in common) / len(common)


def _own_job(man: dict[str, Any]) -> str | None:
    jobs = man.get("jobs") or []
    return jobs[-1].get("id") if jobs else None


def matrix(layout: Layout, manifests: list[tuple[str, dict[str, Any]]] | None = None,
           last: int | None = None) -> dict[str, Any]:
    """R[version][job] for the scored versions, oldest first, with each version's own job,
    its loss before training ("before"), its gain, and its backward transfer. Of the given
    (name, manifest) pairs (a page the caller already read), else of the newest `last`
    versions (all when None): a request reads a page of manifests, not the whole line."""
    from trainerd import gate

    rows: list[dict[str, Any]] = []
    jobs: list[str] = []
    names: dict[str, str] = {}
    if manifests is None:
        listed = versions(layout)
        manifests = [(n, _man(layout, n) or {}) for n in (listed[-last:] if last else listed)]
    for name, man in manifests:
        if not man or "scores" not in man:
            continue
        own = _own_job(man)
        recall = (man.get("scores") or {}).get("recall") or {}
        before = ((man.get("parent_scores") or {}).get("recall") or {}).get(own)
        for j in [*recall, own]:
            if j and j not in jobs:
                jobs.append(j)
        for j in man.get("jobs") or []:
            names[j.get("id")] = j.get("name") or j.get("id")
        after = recall.get(own)
        rows.append({"version": name, "parent": man.get("parent"), "job": own, "recall": recall,
                     "before": before, "gain": None if before is None or after is None else before - after,
                     "backward_transfer": backward_transfer(man), "gate": gate.state(layout, name, man),
                     "probe_loss": ((man.get("scores") or {}).get("probe") or {}).get("loss")})
    return {"jobs": jobs, "names": {j: names.get(j, j) for j in jobs}, "versions": rows}


def line_metrics(layout: Layout) -> Any:
    """Prometheus families for /metrics: the current version's gate flag and backward
    transfer, and how many versions the gate holds."""
    from prometheus_client.core import GaugeMetricFamily

    from trainerd import gate

    flag = gate.current_flag(layout)
    m = matrix(layout, last=METRIC_VERSIONS)  # a scrape reads a window, not the whole line
    flagged = GaugeMetricFamily("trainerd_gate_flagged", "1 when the current version was flagged by the eval "
                                "gate (warn) or is a held version made current by hand", labels=["version", "state"])
    if flag:
        flagged.add_metric([flag["version"], flag["state"]], 1.0)
    yield flagged
    yield GaugeMetricFamily("trainerd_gate_held_versions", "Versions the eval gate holds outside the line "
                            f"(among the newest {METRIC_VERSIONS})",
                            value=float(sum(1 for r in m["versions"] if r["gate"] == "held")))
    bwt = GaugeMetricFamily("trainerd_backward_transfer", "Mean change in loss on earlier jobs' recall samples "
                            "caused by each version (parent's loss - version's; negative: forgetting), "
                            "last 10 versions", labels=["version"])
    for r in m["versions"][-10:]:
        if r["backward_transfer"] is not None:
            bwt.add_metric([r["version"]], r["backward_transfer"])
    yield bwt
