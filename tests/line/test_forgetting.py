"""The recall schedule's decision and an earlier job's "before" (torch-free, hand-made manifests)."""

from __future__ import annotations

import pytest

from tests.line.conftest import fake_version
from trainerd import atomic
from trainerd.line import forgetting


@pytest.mark.parametrize(("credit", "trained", "cost", "budget", "waiting", "full", "left", "why"), [
    (0, 100, 0, 0.25, 3, False, 25, "no earlier job's sample"),
    (0, 100, 500, 0.25, 0, True, 0, "nothing queued"),  # the version the line rests on: always
    (900, 100, 500, 0.25, 0, True, 425, "nothing queued"),  # what is left of the credit carries on
    (0, 100, 500, 0.25, 2, False, 25, "2 job(s) queued: scored when nothing waits, or once the line has "
                                      "trained 1900 more tokens (eval.recall_budget)"),
    (480, 100, 500, 0.25, 2, True, 5, "505 tokens of credit cover the 500"),
    (0, 10**6, 500, 0.0, 2, False, 0, "2 job(s) queued: scored when nothing waits (eval.recall_budget)"),
])
def test_a_full_row_when_nothing_waits_or_when_the_credit_covers_it(credit, trained, cost, budget, waiting,
                                                                    full, left, why):
    assert forgetting.full_row(credit, trained, cost, budget, waiting) == (full, left, why)


def test_the_credit_is_the_parents_and_zero_when_it_has_none():
    assert forgetting.credit_of({"scores": {"recall_schedule": {"credit_tokens": 12}}}) == 12.0
    assert forgetting.credit_of({"scores": {}}) == forgetting.credit_of(None) == 0.0
    assert forgetting.credit_of({"scores": {"recall_schedule": {"credit_tokens": -1}}}) == 0.0


def scored(layout, name: str, parent: str, recall: dict) -> None:
    fake_version(layout, name, parent=parent)
    d = layout.models / name
    man = atomic.read_json(d / atomic.MANIFEST)
    atomic.write_manifest(d, {**man, "scores": {"recall": recall}})


def test_an_earlier_jobs_before_is_its_newest_score_up_the_parents_chain(layout):
    scored(layout, "v0001", "base", {"a": 1.0})
    scored(layout, "v0002", "v0001", {"b": 2.0})  # a row of its own job only
    scored(layout, "v0003", "v0002", {"a": 1.5, "b": 2.5, "c": None})  # c's scoring failed
    scored(layout, "v0004", "v0003", {"d": 4.0})
    scored(layout, "v0005", "v0001", {"a": 9.0, "e": 5.0})  # a held branch: not on v0004's chain
    got = forgetting.last_scores(layout, "v0004", ["a", "b", "c", "d", "x"])
    assert got == {"a": (1.5, "v0003"), "b": (2.5, "v0003"), "d": (4.0, "v0004")}
    assert forgetting.last_scores(layout, "v0002", ["a", "b"]) == {"a": (1.0, "v0001"), "b": (2.0, "v0002")}
    assert forgetting.last_scores(layout, None, ["a"]) == {}
