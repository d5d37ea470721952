"""The eval gate: does a job's result become current? Torch-free (the worker scores, this decides).

After a job, the candidate version and its parent are scored on the same probe set (the
parent's score is cached in its own manifest, or measured once on the freshly loaded parent
before training) and on the recall samples of earlier jobs (trainerd.worker.recall). This
module turns those numbers into a decision:

- `pass`: every check is within its limit;
- `fail`: a check is over its limit; the verdict says which, e.g. "probe loss +12 % vs v0007";
- `unknown`: a score is missing (the eval failed, timed out or never ran). Never a silent
  pass: under `block` the version is held, under `warn` it is published with a flag.

and an action: `current` (it becomes current), `flagged` (current, with a flag shown by
status, the dashboard, `models list` and /metrics) or `held` (written and verified, kept
outside the line until `trainerd models rollback V` makes it current as an override).
The decision is stored in the version's manifest (`gate`), so there is one record of it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from trainerd import atomic
from trainerd.config import GateConfig
from trainerd.paths import Layout

OVERRIDES = "gate-overrides.json"  # in models/: held versions someone made current anyway


def _rel(new: float, old: float) -> float:
    return (new - old) / old if old else 0.0


def decide(cfg: GateConfig, cand: dict[str, Any], parent: dict[str, Any], parent_name: str,
           problem: str | None = None) -> dict[str, Any]:
    """The gate's record for a candidate, from its scores and its parent's.

    `cand`/`parent`: {"probe": {loss, exact_match, complete, sha} | None, "recall": {job: loss}}.
    `problem`: why scoring failed, if it did (then the result is `unknown`). Recall is
    compared on the earlier jobs both were scored on (the candidate's own job is new)."""
    reasons: list[str] = []
    unknown: list[str] = []
    measured: dict[str, Any] = {}
    if problem:
        unknown.append(problem)
    cp, pp = cand.get("probe"), parent.get("probe")
    if cp is None and pp is None:
        pass  # no probe set: recall alone decides (a failed eval is `problem`, never this)
    elif cp is None or pp is None or not cp.get("complete") or not pp.get("complete"):
        which = cp if pp is not None and pp.get("complete") else pp
        unknown.append(f"probe eval of {'the candidate' if which is cp else parent_name} incomplete: "
                       f"{(which or {}).get('error') or (which or {}).get('stopped_by') or 'not run'}")
    elif cp.get("sha") != pp.get("sha"):
        unknown.append(f"probe set changed since {parent_name} was scored")
    else:
        if cp.get("loss") is not None and pp.get("loss") is not None:
            r = _rel(cp["loss"], pp["loss"])
            measured["probe_loss_change"] = round(r, 4)
            if r > cfg.max_probe_regression:
                reasons.append(f"probe loss {r * 100:+.0f} % vs {parent_name}")
        if cp.get("exact_match") is not None and pp.get("exact_match") is not None:
            d = cp["exact_match"] - pp["exact_match"]
            measured["exact_match_change"] = round(d, 4)
            if -d > cfg.max_exact_match_drop:
                reasons.append(f"exact match {d * 100:+.0f} points vs {parent_name}")
    common = sorted(set(cand.get("recall") or {}) & set(parent.get("recall") or {}) - {cand.get("job")})
    if common:
        new = sum(cand["recall"][j] for j in common) / len(common)
        old = sum(parent["recall"][j] for j in common) / len(common)
        r = _rel(new, old)
        measured["recall_loss_change"] = round(r, 4)
        # An earlier job's "before" may be an older ancestor's score (eval.recall_budget):
        # then the change is all the forgetting since that version, and the verdict names it.
        came = parent.get("recall_from") or {}
        since = sorted({came.get(j, parent_name) for j in common})
        if r > cfg.max_recall_regression:
            reasons.append(f"recall loss {r * 100:+.0f} % on {len(common)} earlier job(s) vs "
                           + (parent_name if since == [parent_name] else f"their last scores ({', '.join(since)})"))
    sched = cand.get("recall_schedule") or {}
    notes = [f"earlier jobs not scored: {sched.get('why')}"] if sched.get("row") == "own" and \
        sched.get("cost_tokens") else []
    result = "fail" if reasons else "unknown" if unknown else "pass" if measured else "none"
    # "none": nothing to compare yet (no probe set, no earlier job's sample): not a failure
    action = ("current" if cfg.mode == "off" or result in ("pass", "none")
              else "held" if cfg.mode == "block" else "flagged")
    word = {"current": "passed", "flagged": "flagged", "held": "held"}[action]
    why = "; ".join(reasons or [f"unknown ({u})" for u in unknown])
    return {"mode": cfg.mode, "result": result, "action": action, "parent": parent_name,
            "reasons": reasons, "unknown": unknown, "measured": measured, "at": time.time(),
            **({"notes": notes} if notes else {}),
            "verdict": (f"{word}: {why}" if why else f"{word} (vs {parent_name})") + "".join(f"; {n}" for n in notes)}


def preempted_hold(parent: str, current: str, current_jobs: list[str], preempted_by: str | None,
                   scored: dict[str, Any] | None) -> dict[str, Any]:
    """The hold record of a preempted job's version (queue.preempt): it resumed exactly and
    trained from `parent`, but `current` became current meanwhile, so making it current
    would drop what `current` learned. Held as the gate holds a regression, with the gate's
    own scores kept (`scored`), until `trainerd models rollback V --force`."""
    g = dict(scored or {})
    who = ", ".join(f"job {j}" + (", which preempted it" if j == preempted_by else "") for j in current_jobs)
    why = f"trained from {parent}; {current}{f' ({who})' if who else ''} became current meanwhile"
    return {**g, "mode": g.get("mode", "off"), "result": g.get("result", "none"), "action": "held",
            "parent": parent, "reasons": [why, *g.get("reasons", [])], "unknown": g.get("unknown", []),
            "measured": g.get("measured", {}), "held_for": "preempted", "at": time.time(),
            "verdict": f"held: {why}"}


# ------------------------------------------------------------------ the line's view
def of_manifest(man: dict[str, Any] | None) -> dict[str, Any] | None:
    g = (man or {}).get("gate")
    return g if isinstance(g, dict) else None


def is_held(man: dict[str, Any] | None) -> bool:
    return (of_manifest(man) or {}).get("action") == "held"


def overrides(layout: Layout) -> dict[str, Any]:
    try:
        o = atomic.read_json(layout.models / OVERRIDES)
        return o if isinstance(o, dict) else {}
    except (OSError, ValueError):
        return {}


def override_problem(man: dict[str, Any], name: str, current: str | None, force: bool) -> str | None:
    """Why making held version `name` current needs --force (its parent is no longer
    current: making it current would drop what was trained since), or None."""
    parent = man.get("parent") or "base"
    if force or parent == (current or "base"):
        return None
    return (f"{name} was held by the eval gate ({(of_manifest(man) or {}).get('verdict', '?')}) and its parent "
            f"{parent} is no longer current (current is {current or 'base'}): making it current drops "
            f"what the line learned since {parent}. Add --force to do it anyway")


def record_override(layout: Layout, name: str, before: str | None, force: bool) -> None:
    o = overrides(layout)
    o[name] = {"at": time.time(), "from": before or "base", "force": force, "pid": os.getpid()}
    atomic.write_json(layout.models / OVERRIDES, o)


def state(layout: Layout, name: str | None, man: dict[str, Any] | None) -> str:
    """'held', 'override' (held, made current by hand), 'flagged', 'unknown' or ''."""
    g = of_manifest(man)
    if g is None or name is None:
        return ""
    if g.get("action") == "held":
        return "override" if name in overrides(layout) else "held"
    if g.get("action") == "flagged":
        return "flagged"
    return ""


def current_flag(layout: Layout, name: str | None = None, man: dict[str, Any] | None = None
                 ) -> dict[str, Any] | None:
    """The gate record of the current version when it is flagged or overridden (for
    status, the dashboard and /metrics), else None. `name` and `man`: the current version
    and its manifest, when the caller has read them already."""
    if name is None or man is None:
        try:
            name = os.readlink(layout.current_model)
            man = atomic.read_json(layout.models / name / atomic.MANIFEST)
        except (OSError, ValueError):
            return None
    s = state(layout, name, man)
    if s:
        return {"version": name, "state": s, "verdict": (of_manifest(man) or {}).get("verdict")}
    return None


def held_jobs(layout: Layout) -> set[str]:
    """Done jobs whose version the gate holds (and nobody made current): their examples are
    not in the line, so replay must not bring them back into it."""
    if not layout.done.is_dir():
        return set()
    made_current = overrides(layout)
    out = set()
    for d in layout.done.iterdir():
        try:
            meta = atomic.read_json(d / "job.json")
        except (OSError, ValueError):
            continue
        if (meta.get("gate") or {}).get("action") == "held" and meta.get("version") not in made_current:
            out.add(d.name)
    return out
