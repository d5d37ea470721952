"""Replay: a seeded, reused pick of done jobs' examples, and a real job that trains it."""

from __future__ import annotations

import pytest

from tests.conftest import chat_rows, make_base, write_jsonl
from tests.line.conftest import run_once
from trainerd import atomic
from trainerd.line.replay import replay_for_job, sample_examples
from trainerd.paths import Layout


def test_replay_sample_is_deterministic_excludes_the_job_and_survives_new_done_jobs(layout):
    for i, tag in enumerate(["a", "b", "c"]):
        d = layout.done / f"2026112{i}T000000-00000{i}-{tag}"
        d.mkdir(parents=True)
        write_jsonl(d / "data.jsonl", chat_rows(20, tag))
    job = layout.active / "20261124T000000-000009-new"
    job.mkdir(parents=True)
    rows, rec = replay_for_job(layout, job, fraction=0.5, new_examples=10)
    assert len(rows) == 5 and rec["examples"] == 5 and rec["pool_examples"] == 60
    assert sum(rec["sources"].values()) == 5 and "sources" in atomic.read_json(job / "replay.json")
    # Same id, same pick, from a clean job dir; another id, another pick.
    other = layout.active / "20261124T000000-000010-other"
    other.mkdir()
    twin = layout.active.parent / "twin" / job.name
    twin.mkdir(parents=True)
    assert replay_for_job(layout, twin, 0.5, 10)[0] == rows
    assert replay_for_job(layout, other, 0.5, 10)[0] != rows

    # A later attempt reuses the pick even though done/ has grown since.
    d = layout.done / "20261123T000000-000008-d"
    d.mkdir()
    write_jsonl(d / "data.jsonl", chat_rows(50, "d"))
    again, rec2 = replay_for_job(layout, job, 0.5, 10)
    assert again == rows and rec2 == rec
    # The job's own data is never replayed into itself; off means nothing.
    (layout.done / job.name).mkdir()
    write_jsonl(layout.done / job.name / "data.jsonl", chat_rows(5, "self"))
    picked, _, _ = sample_examples(layout, 1000, 1, exclude=job.name)
    assert not [r for r in picked if b"self" in r]
    assert replay_for_job(layout, other, 0.0, 10) == ([], None)


@pytest.mark.slow
def test_replayed_examples_join_a_real_job_once(tmp_path, tiny_model):
    base = make_base(tmp_path / "b", tiny_model, "[replay]\nfraction = 0.5\n")
    layout = Layout.at(base)
    write_jsonl(base / "inbox" / "a_old.jsonl", chat_rows(8, "old"))
    write_jsonl(base / "inbox" / "b_new.jsonl", chat_rows(8, "new"))
    run_once(base)
    v1, v2 = (atomic.read_json(layout.models / v / "manifest.json") for v in ("v0001", "v0002"))
    assert v1["replay"] is None and v1["examples_trained"] == 8  # nothing done yet to replay
    assert v2["replay"]["examples"] == 4 and v2["examples_trained"] == 12
    [job] = [d for d in layout.done.iterdir() if d.name.endswith("b_new")]
    assert list(v2["replay"]["sources"]) == [next(d.name for d in layout.done.iterdir() if d.name.endswith("a_old"))]
    rec = atomic.read_json(job / "replay.json")
    assert len((job / "replay.jsonl").read_text().splitlines()) == 4 == sum(map(len, rec["sources"].values()))
