"""Per-tag probe scores and the recall sample (in process, tiny model)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import chat_rows
from trainerd.jobs import JobMeta
from trainerd.paths import Layout
from trainerd.worker.evals import evaluate, load_probe, tags_of
from trainerd.worker.recall import write_sample


def test_tags_are_read_at_the_top_level_then_under_metadata():
    assert tags_of({"skill": "math", "metadata": {"skill": "x", "level": 2}}, ["skill", "level", "none"]) == \
        {"skill": "math", "level": "2"}
    assert tags_of({"metadata": "not a dict"}, ["skill"]) == {}


def test_every_score_is_reported_per_group_as_well_as_overall(tmp_path, tok, tiny_model):
    from transformers import AutoModelForCausalLM

    rows = chat_rows(6, "t")
    for i, r in enumerate(rows):
        r["metadata" if i % 2 else "skill"] = {"skill": "b"} if i % 2 else "a"
    rows[5] = {"text": "untagged text, loss only"}
    path = tmp_path / "probe.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    probe = load_probe(path, tok, 256, k=4, group_by=["skill"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    row = evaluate(model, tok, probe, 4, 60)
    g = row["groups"]["skill"]
    assert set(g) == {"a", "b"} and g["a"]["examples"] == 3 and g["b"]["examples"] == 2
    assert g["a"]["generated"] == 2 and g["b"]["generated"] == 2  # k = 4 prompts: lines 1-4
    alone = load_probe(path, tok, 256, k=4)  # the same lines, scored without tags
    only_a = type(alone)(alone.sha, [e for e, t in zip(alone.examples, probe.example_tags, strict=True)
                                     if t.get("skill") == "a"], [])
    assert g["a"]["loss"] == pytest.approx(evaluate(model, tok, only_a, 4, 60)["loss"], rel=1e-6)
    assert "groups" in row and evaluate(model, tok, alone, 4, 60)["groups"] == {}


def test_the_recall_sample_is_fixed_by_the_job_id_and_written_once(tmp_path):
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    job = tmp_path / "job"
    job.mkdir()
    lines = [json.dumps({"text": f"example {i}"}) for i in range(50)]
    (job / "data.jsonl").write_text("\n".join(lines) + "\n\n")
    meta = JobMeta(id="20261201T000000-000001-r", original_name="r.jsonl", sha256="x", size=1, examples=50)
    path = write_sample(layout, job, meta, 8)
    first = path.read_text()
    got = first.splitlines()
    assert len(got) == 8 and all(x in lines for x in got) and got == sorted(got, key=lines.index)
    path.unlink()
    assert write_sample(layout, job, meta, 8).read_text() == first  # same sample on every attempt
    (job / "data.jsonl").write_text("")
    assert write_sample(layout, job, meta, 8).read_text() == first  # written once
    assert write_sample(layout, job, meta.model_copy(update={"id": "20261201T000000-000002-r"}), 0) is None


def test_a_scoring_that_times_out_is_an_unknown_gate_result_not_a_pass(tmp_path, tok, tiny_model):
    from transformers import AutoModelForCausalLM

    from trainerd.config import Config
    from trainerd.line.refs import ModelRef
    from trainerd.worker.recall import Scorer

    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    job = tmp_path / "job"
    job.mkdir()
    (job / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(10, "u")))
    meta = JobMeta(id="20261201T000000-000003-u", original_name="u.jsonl", sha256="x", size=1, examples=10)
    write_sample(layout, job, meta, 4)
    cfg = Config(base_model=str(tiny_model), gate={"mode": "block"}, eval={"max_seconds": 1e-9})
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    scorer = Scorer(layout, cfg, meta, ModelRef("base", "base", str(tiny_model)), tok, job, None)
    scorer.before(model)
    out = scorer.after(model, None)
    assert out["gate"]["result"] == "unknown" and out["gate"]["action"] == "held"
    assert "timed out" in out["gate"]["verdict"] and out["scores"]["recall"] == {meta.id: None}


def test_waiting_work_is_what_the_daemon_would_take_in_or_claim(tmp_path):
    """The recall schedule's `waiting`: queued jobs and delivered inbox files; not an empty
    inbox/high/, a file still being delivered, or one rejected in place (its note beside it)."""
    from trainerd.inbox import note_path
    from trainerd.worker.recall import waiting_jobs

    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    (layout.inbox / "high").mkdir()
    (layout.inbox / ".coming.jsonl").write_text("{}\n")
    bad = layout.inbox / "bad.jsonl"
    bad.write_text("not json\n")
    note_path(bad).write_text("{}")
    assert waiting_jobs(layout) == 0
    (layout.inbox / "high" / "next.jsonl").write_text("{}\n")
    (layout.queued("normal") / "20261201T000000-000009-q").mkdir()
    assert waiting_jobs(layout) == 2
