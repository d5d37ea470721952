"""The eval gate, the forgetting matrix and per-tag scores, with real daemons and a tiny model.

A first job teaches the probe set's answers; a second one trains answers that contradict
them. Under `block` the second version is held (written, verified, not current) and
`models rollback` overrides; under `warn` it is published with a flag. The matrix in the
manifests is recomputed here from the weights on disk.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd.paths import Layout

pytestmark = pytest.mark.slow

CFG = """
[train]
learning_rate = 5e-3
micro_batch_size = 2
[eval]
group_by = ["skill"]
generate_examples = 2
max_new_tokens = 8
recall_examples = 8
"""


def probe_rows() -> list[dict]:
    rows = chat_rows(8, "a")
    for i, r in enumerate(rows):  # tags at the top level and under metadata, as both kinds of file do
        if i % 2:
            r["skill"] = "odd"
        else:
            r["metadata"] = {"skill": "even"}
    return rows


def contradicting(n: int) -> list[dict]:
    return [{"messages": [r["messages"][0], {"role": "assistant", "content": "I will never tell anyone any code."}]}
            for r in chat_rows(n, "a")]


def two_jobs(base) -> Layout:
    layout = Layout.at(base)
    (base / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probe_rows()))
    good = chat_rows(32, "a")
    for i, r in enumerate(good):
        r["skill"] = "odd" if i % 2 else "even"  # extra keys are kept and ignored by training
    write_jsonl(base / "inbox" / "good.jsonl", good)
    cli("run", "--base-dir", base, "--once")
    write_jsonl(base / "inbox" / "bad.jsonl", contradicting(32))
    cli("run", "--base-dir", base, "--once")
    return layout


def done_meta(layout: Layout, name: str) -> dict:
    for d in layout.done.iterdir():
        meta = json.loads((d / "job.json").read_text())
        if meta["original_name"] == name:
            return meta
    raise AssertionError(f"{name} not in done/")


def manifest(layout: Layout, v: str) -> dict:
    return json.loads((layout.models / v / "manifest.json").read_text())


def test_block_holds_a_contradicting_job_and_rollback_overrides(tmp_path, tiny_model):
    layout = two_jobs(make_base(tmp_path / "b", tiny_model, CFG + '[gate]\nmode = "block"\n'))
    good, bad = done_meta(layout, "good.jsonl"), done_meta(layout, "bad.jsonl")
    assert good["gate"]["result"] == "pass" and good["version"] == "v0001"
    assert bad["gate"]["action"] == "held" and bad["version"] == "v0002"
    assert bad["gate"]["verdict"].startswith("held: probe loss +") and "% vs v0001" in bad["gate"]["verdict"]
    assert [a["outcome"] for a in bad["attempts"]] == ["finished"]
    assert (layout.models / "current").readlink().name == "v0001"  # held: not current
    assert manifest(layout, "v0002")["parent"] == "v0001"
    listed = {v["name"]: v for v in json.loads(cli("models", "list", "--base-dir", layout.base, "--json").stdout)}
    assert listed["v0002"]["gate_state"] == "held" and listed["v0001"]["current"]
    assert "HELD" in cli("models", "list", "--base-dir", layout.base).stdout
    with sqlite3.connect(layout.state_db) as db:
        kinds = [json.loads(d)["action"] for (d,) in db.execute("SELECT data FROM events WHERE kind = 'gate'")]
    assert kinds == ["current", "held"]
    from trainerd.line.replay import replay_pool

    assert [p.parent.name for p in replay_pool(layout)] == [good["id"]]  # held data is not replayed

    # A held version whose parent is no longer current needs --force, and says why.
    cli("models", "rollback", "base", "--base-dir", layout.base)
    p = cli("models", "rollback", "v0002", "--base-dir", layout.base, check=False)
    assert p.returncode == 1 and "--force" in p.stderr + p.stdout and "v0001" in p.stderr + p.stdout
    cli("models", "rollback", "v0001", "--base-dir", layout.base)
    p = cli("models", "rollback", "v0002", "--base-dir", layout.base)
    assert "override" in p.stdout and (layout.models / "current").readlink().name == "v0002"
    overrides = json.loads((layout.models / "gate-overrides.json").read_text())
    assert overrides["v0002"]["from"] == "v0001" and not overrides["v0002"]["force"]
    listed = {v["name"]: v for v in json.loads(cli("models", "list", "--base-dir", layout.base, "--json").stdout)}
    assert listed["v0002"]["gate_state"] == "override" and listed["v0002"]["current"]
    assert len(replay_pool(layout)) == 2  # made current: its examples are in the line now


def test_warn_flags_it_and_the_matrix_and_tags_are_what_the_weights_say(tmp_path, tiny_model):
    layout = two_jobs(make_base(tmp_path / "w", tiny_model, CFG))  # mode = "warn" is the default
    bad = done_meta(layout, "bad.jsonl")
    assert bad["gate"]["action"] == "flagged" and bad["gate"]["verdict"].startswith("flagged: probe loss +")
    assert (layout.models / "current").readlink().name == "v0002"
    s = json.loads(cli("status", "--base-dir", layout.base, "--json").stdout)
    assert s["model"]["gate"]["state"] == "flagged" and s["model"]["gate"]["version"] == "v0002"

    # Per-tag scores: every eval row, overall and per value of `skill`, also in state.db.
    job = layout.done / bad["id"]
    final = [json.loads(x) for x in (job / "evals.jsonl").read_text().splitlines()][-1]
    groups = final["groups"]["skill"]
    assert set(groups) == {"odd", "even"} and groups["odd"]["examples"] == groups["even"]["examples"] == 4
    assert final["examples"] == 8 and final["loss"] > min(g["loss"] for g in groups.values())
    with sqlite3.connect(layout.state_db) as db:
        got = dict(db.execute("SELECT value, loss FROM eval_groups WHERE job_id = ? AND tag = 'skill'",
                              (bad["id"],)).fetchall())
    assert got == pytest.approx({v: g["loss"] for v, g in groups.items()})

    # The matrix: v0001 scored on job 1's sample; v0002 on jobs 1 and 2; recomputed here.
    good_id = done_meta(layout, "good.jsonl")["id"]
    m = manifest(layout, "v0001")["scores"]["recall"], manifest(layout, "v0002")["scores"]["recall"]
    assert set(m[0]) == {good_id} and set(m[1]) == {good_id, bad["id"]}
    before = manifest(layout, "v0002")["parent_scores"]["recall"]
    for v, row in (("v0001", m[0]), ("v0002", m[1])):
        for j, loss in row.items():
            assert recompute(layout, tiny_model, v, j) == pytest.approx(loss, rel=1e-4), (v, j)
    assert before[bad["id"]] == pytest.approx(recompute(layout, tiny_model, "v0001", bad["id"]), rel=1e-4)
    assert before[good_id] == pytest.approx(m[0][good_id])  # the parent's own score, cached
    shown = json.loads(cli("models", "show", "v0002", "--base-dir", layout.base, "--json").stdout)
    assert shown["recall"]["backward_transfer"] == pytest.approx(m[0][good_id] - m[1][good_id])
    assert shown["recall"]["backward_transfer"] < 0  # contradicting answers made it forget
    assert [r["version"] for r in shown["matrix"]["versions"]] == ["v0001", "v0002"]
    assert "forgetting matrix" in cli("models", "show", "v0002", "--base-dir", layout.base).stdout
    assert "flagged" in cli("status", "--base-dir", layout.base).stdout

    # /metrics and the dashboard's data (the app behind the HTTP server, in process).
    from trainerd.config import ServerConfig
    from trainerd.web.metrics import TrainerdCollector
    from trainerd.web.reads import Reader

    app = Reader(layout, ServerConfig(), lambda: 0.0)
    fams = {f.name: f for f in TrainerdCollector(app).collect()}
    [flag] = fams["trainerd_gate_flagged"].samples
    assert flag.labels == {"version": "v0002", "state": "flagged"} and flag.value == 1
    bwt = {x.labels["version"]: x.value for x in fams["trainerd_backward_transfer"].samples}
    assert bwt == {"v0002": pytest.approx(shown["recall"]["backward_transfer"])}
    assert [r["version"] for r in app.models()["matrix"]["versions"]] == ["v0001", "v0002"]
    assert app.evals()["latest"]["groups"]["skill"].keys() == {"odd", "even"}
    # Recall samples carry tags too (the good job's rows are tagged like the probe set).
    assert manifest(layout, "v0002")["scores"]["recall_groups"][good_id]["skill"].keys() == {"odd", "even"}

    # TensorBoard: one run for the line, its step continuing across the two jobs (16 steps each).
    from tests.worker.test_evals import scalars

    tb: dict = {}
    for f in sorted((layout.base / "tensorboard" / "line").glob("events.out.tfevents.*")):
        for tag, points in scalars(f).items():
            tb.setdefault(tag, []).extend(points)
    assert [st for st, _ in tb["train/loss"]] == list(range(1, 33))
    assert [st for st, _ in tb["probe/loss"]] == [16, 32] and manifest(layout, "v0002")["line_step"] == 32
    assert tb[f"recall/{good_id}"] == [(16, pytest.approx(m[0][good_id], rel=1e-5)),
                                       (32, pytest.approx(m[1][good_id], rel=1e-5))]


def recompute(layout: Layout, tiny_model, version: str, job_id: str) -> float:
    """Mean token loss of `version` on the job's recall sample, computed without trainerd's scorer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainerd.worker.data import tokenize_example

    tok = AutoTokenizer.from_pretrained(layout.models / version)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), layout.models / version)
    model.eval()
    nll, n = 0.0, 0
    lines = (layout.models / "recall" / f"{job_id}.jsonl").read_text().splitlines()
    assert len(lines) == 8
    with torch.no_grad():
        for line in lines:
            [(ids, mask)] = tokenize_example(json.loads(line), tok)
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor([i if k else -100 for i, k in zip(ids[1:], mask[1:], strict=True)])
            nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            n += int((target != -100).sum())
    return nll / n


def test_a_burst_of_small_files_scores_earlier_jobs_on_the_version_it_ends_on(tmp_path, tiny_model):
    """eval.recall_budget (issue 19): three files queued at once. v0001 has no earlier job;
    v0002 (a job still queued behind it, too little trained for the budget) is scored on its
    own job's sample only, and its verdict says so; v0003, with nothing queued, gets the full
    row, and job 1's "before" is v0001's score (v0002 never measured it), recomputed here."""
    base = make_base(tmp_path / "b", tiny_model, CFG + "[queue]\nsettle_seconds = 0\n[replay]\nfraction = 0\n")
    layout = Layout.at(base)
    for name, seed in (("one", "p"), ("two", "q"), ("three", "r")):
        write_jsonl(base / "inbox" / f"{name}.jsonl", chat_rows(8, seed))
    cli("run", "--base-dir", base, "--once")
    ids = [done_meta(layout, f"{n}.jsonl")["id"] for n in ("one", "two", "three")]
    v1, v2, v3 = (manifest(layout, v) for v in ("v0001", "v0002", "v0003"))
    assert [m["jobs"][0]["id"] for m in (v1, v2, v3)] == ids
    assert set(v1["scores"]["recall"]) == {ids[0]} and v1["scores"]["recall_schedule"]["row"] == "own"
    s2 = v2["scores"]["recall_schedule"]
    assert set(v2["scores"]["recall"]) == {ids[1]} and s2["row"] == "own" and s2["waiting"] == 1
    assert s2["cost_tokens"] > s2["credit_tokens"] > 0  # a quarter of two jobs' tokens < job 1's sample
    assert "earlier jobs not scored: 1 job(s) queued" in v2["gate"]["verdict"]
    s3 = v3["scores"]["recall_schedule"]
    assert set(v3["scores"]["recall"]) == set(ids) and (s3["row"], s3["why"], s3["waiting"]) == \
        ("full", "nothing queued", 0)
    before = v3["parent_scores"]
    assert before["recall"][ids[0]] == v1["scores"]["recall"][ids[0]]  # its last score, not a new forward
    assert before["recall"][ids[1]] == v2["scores"]["recall"][ids[1]]
    assert before["recall_from"] == {ids[0]: "v0001"}  # the parent's own scores need no note
    assert v3["scores"]["recall"][ids[0]] == pytest.approx(recompute(layout, tiny_model, "v0003", ids[0]),
                                                           rel=1e-4)
    assert v3["gate"]["measured"]["recall_loss_change"] == pytest.approx(
        (v3["scores"]["recall"][ids[0]] + v3["scores"]["recall"][ids[1]])
        / (v1["scores"]["recall"][ids[0]] + v2["scores"]["recall"][ids[1]]) - 1, abs=1e-4)
    assert "notes" not in v3["gate"]
