"""The gate's decision from scores (torch-free, no processes): limits, unknown, and actions."""

from __future__ import annotations

from trainerd.config import GateConfig
from trainerd.gate import decide, override_problem

PROBE = {"sha": "s", "complete": True, "loss": 1.0, "exact_match": 0.5}


def scores(loss: float = 1.0, em: float = 0.5, recall: dict | None = None, **probe) -> dict:
    return {"probe": {**PROBE, "loss": loss, "exact_match": em, **probe}, "recall": recall or {}, "job": "j2"}


def test_limits_pass_fail_and_the_verdict_names_the_parent():
    cfg = GateConfig(mode="block")
    assert decide(cfg, scores(1.04), scores(), "v0007")["action"] == "current"
    g = decide(cfg, scores(1.12), scores(), "v0007")
    assert g["result"] == "fail" and g["action"] == "held" and g["verdict"] == "held: probe loss +12 % vs v0007"
    g = decide(cfg, scores(em=0.3), scores(), "v0007")
    assert g["action"] == "held" and "exact match -20 points" in g["verdict"]
    # Recall: only earlier jobs both were scored on; the candidate's own job is new.
    g = decide(cfg, scores(recall={"j1": 1.2, "j2": 0.1}), scores(recall={"j1": 1.0}), "v0007")
    assert g["measured"]["recall_loss_change"] == 0.2 and "recall loss +20 % on 1 earlier job(s)" in g["verdict"]
    warn = decide(GateConfig(mode="warn"), scores(1.12), scores(), "v0007")
    assert warn["action"] == "flagged" and warn["verdict"].startswith("flagged: probe loss +12 %")
    assert decide(GateConfig(mode="off"), scores(2.0), scores(), "v0007")["action"] == "current"


def test_an_eval_that_failed_or_timed_out_is_unknown_never_a_pass():
    cfg = GateConfig(mode="block")
    timed_out = scores(complete=False, stopped_by="max_seconds")
    g = decide(cfg, timed_out, scores(), "v0003")
    assert g["result"] == "unknown" and g["action"] == "held" and "max_seconds" in g["verdict"]
    g = decide(GateConfig(mode="warn"), scores(), scores(), "v0003", problem="scoring failed: OOM")
    assert g["result"] == "unknown" and g["action"] == "flagged" and "OOM" in g["verdict"]
    assert decide(cfg, {"probe": None, "recall": {}}, scores(), "v0003")["result"] == "unknown"
    assert decide(cfg, scores(), scores(sha="other"), "v0003")["result"] == "unknown"
    # Nothing configured to compare (no probe set, first job): not a failure, and said so.
    g = decide(cfg, {"probe": None, "recall": {}}, {"probe": None, "recall": {}}, "base")
    assert g["result"] == "none" and g["action"] == "current"


def test_an_override_of_a_held_version_off_its_parent_needs_force():
    man = {"parent": "v0001", "gate": {"action": "held", "verdict": "held: probe loss +9 % vs v0001"}}
    assert override_problem(man, "v0002", "v0001", force=False) is None
    why = override_problem(man, "v0002", "v0003", force=False)
    assert why and "--force" in why and "v0001" in why and "v0003" in why
    assert override_problem(man, "v0002", "v0003", force=True) is None


def test_recall_against_older_scores_names_them_and_an_own_row_says_why():
    """eval.recall_budget: an earlier job's "before" may be an older version's score (its
    parent_scores.recall_from); a version scored on its own job only says so in its verdict."""
    cfg = GateConfig(mode="block")
    parent = {**scores(recall={"j0": 1.0, "j1": 1.0}), "recall_from": {"j0": "v0003"}}
    g = decide(cfg, scores(recall={"j0": 1.3, "j1": 1.3, "j2": 0.1}), parent, "v0005")
    assert g["verdict"] == "held: recall loss +30 % on 2 earlier job(s) vs their last scores (v0003, v0005)"
    sched = {"row": "own", "why": "2 job(s) queued: scored when nothing waits", "cost_tokens": 400}
    g = decide(cfg, {**scores(recall={"j2": 0.1}), "recall_schedule": sched}, parent, "v0005")
    assert g["action"] == "current" and "recall_loss_change" not in g["measured"]
    assert g["verdict"] == "passed (vs v0005); earlier jobs not scored: 2 job(s) queued: scored when nothing waits"
    first = {**scores(), "recall_schedule": {"row": "own", "why": "no earlier job's sample", "cost_tokens": 0}}
    assert decide(cfg, first, scores(), "base")["verdict"] == "passed (vs base)"  # nothing to say
