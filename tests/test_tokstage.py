"""The tokenizing stage and `validate` against real processes, on a reasoning-template model.

A Qwen3-style template (earlier reasoning dropped as the conversation goes on) trains a
multi-turn file end to end; the seed system's two formats (chat files, and
user_prompt/expected_answer rows through [data.map], here as a JSON array) train beside
it. While the first job's worker is frozen with SIGSTOP, the stage tokenizes the jobs
queued behind it and fails an over-length one with its line, before its turn.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.conftest import chat_rows, cli, daemon, make_base, wait_for, write_jsonl
from tests.worker import templates as T
from trainerd import atomic
from trainerd.jobs import TOKEN_CACHE, JobMeta
from trainerd.paths import Layout

MAP = '[data.map]\nprompt = "user_prompt"\ncompletion = "expected_answer"\n'


def reasoning_rows(n: int) -> list[dict]:
    return [{"messages": [
        {"role": "user", "content": f"What is {i} plus 1?"},
        {"role": "assistant", "content": f"<think>\n{i} and one more\n</think>\n\n{i + 1}"},
        {"role": "user", "content": "And doubled?"},
        {"role": "assistant", "content": f"<think>\ntwice {i + 1}\n</think>\n\n{2 * (i + 1)}"},
    ]} for i in range(n)]


def seed_eval_rows(n: int) -> list[dict]:
    return [{"skill": "arith", "user_prompt": f"{i}+{i}=", "expected_answer": f" {2 * i}",
             "metadata": {"difficulty": i % 3}} for i in range(n)]


@pytest.fixture(scope="module")
def qwen3_model(tiny_model, tmp_path_factory):
    return T.save_model_with_template("qwen3", tiny_model, tmp_path_factory.mktemp("qwen3") / "model")


def _job(layout: Layout, state: str, stem: str):
    folder = layout.base / "jobs" / state
    found = [p for p in folder.rglob("job.json") if stem in p.parent.name]
    return found[0].parent if found else None


@pytest.mark.slow
def test_stage_tokenizes_behind_a_frozen_worker_and_every_format_trains(tmp_path, qwen3_model):
    base = make_base(tmp_path / "base", qwen3_model, MAP + "[checkpoint]\nevery_steps = 1000\n")
    layout = Layout.at(base)
    inbox = base / "inbox"
    with daemon(base) as d:
        write_jsonl(inbox / "a-reasoning.jsonl", reasoning_rows(120))
        job_a = wait_for(lambda: _job(layout, "active", "a-reasoning"), timeout=120, what="job a active")
        pid = wait_for(lambda: (atomic.read_json(job_a / "progress.json") or {}).get("pid")
                       if (job_a / "progress.json").exists() else None, timeout=180, what="a training")
        os.kill(pid, signal.SIGSTOP)
        try:
            tmp = inbox / ".b-seed.json.part"  # a JSON array, pretty-printed, as datasets ship
            tmp.write_text(json.dumps(seed_eval_rows(24), indent=2))
            tmp.rename(inbox / "b-seed.json")
            write_jsonl(inbox / "c-chat.jsonl", chat_rows(24))
            write_jsonl(inbox / "d-long.jsonl", chat_rows(2) + [
                {"messages": [{"role": "user", "content": "x " * 400}, {"role": "assistant", "content": "y"}]}])
            failed = wait_for(lambda: _job(layout, "failed", "d-long"), timeout=180, what="d failed by the stage")
            err = atomic.read_json(failed / "error.json")
            assert err["stage"] == "tokenizing" and "line 3 (" in err["reason"], err
            for stem in ("b-seed", "c-chat"):
                job = wait_for(lambda s=stem: _job(layout, "queued", s), timeout=30, what=stem)
                wait_for(lambda j=job: (j / TOKEN_CACHE / "manifest.json").exists(), timeout=120,
                         what=f"{stem} tokenized while a trains")
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: len(list((base / "jobs" / "done").iterdir())) == 3, timeout=600, what="3 jobs done")
        d.send_signal(signal.SIGTERM)
        d.wait(120)
    done = {p.name.split("-", 2)[-1]: JobMeta.load(p) for p in (base / "jobs" / "done").iterdir()}
    a, b, c = done["a-reasoning"], done["b-seed"], done["c-chat"]
    # Lines stay lines; each reasoning conversation trains its first turn on its own.
    assert a.examples == 120 and a.sequences == 240 and a.dropped == a.truncated == 0
    assert b.examples == 24 and b.sequences == 24 and c.sequences == 24
    for job, meta in ((base / "jobs" / "done" / b.id, b), (base / "jobs" / "done" / c.id, c)):
        log = (job / "worker.log").read_text()
        assert "24 examples as 24 sequences" in log
        # The cache the worker trained from was written by the stage before the attempt.
        assert os.path.getmtime(job / TOKEN_CACHE / "manifest.json") < meta.attempts[0].started_at
    st = json.loads(cli("status", "--base-dir", base, "--json").stdout)
    assert st["model"]["version"] == "v0003"


def test_validate_gives_the_daemons_verdict(tmp_path, tiny_model):
    base = make_base(tmp_path / "base", tiny_model, MAP)
    drop = make_base(tmp_path / "drop", tiny_model, MAP + '[train]\noverlength = "drop"\n')
    long = {"messages": [{"role": "user", "content": "x " * 400}, {"role": "assistant", "content": "y"}]}
    files = {
        "long.jsonl": chat_rows(2) + [long],
        "all-long.jsonl": [long, long],
        "seed.jsonl": seed_eval_rows(3),
        "chat.jsonl": chat_rows(3),
    }
    for name, rows in files.items():
        write_jsonl(tmp_path / name, rows)
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps(chat_rows(2)))
    paths = [tmp_path / n for n in files] + [arr]

    p = cli("validate", "--json", "-b", base, *paths, check=False)
    got = {os.path.basename(r["path"]): r for r in json.loads(p.stdout)}
    assert p.returncode == 1
    assert not got["long.jsonl"]["ok"] and "line 3 (" in got["long.jsonl"]["reason"]
    assert got["all-long.jsonl"]["reason"].startswith("2 example(s) longer than train.max_seq_len")
    for name in ("seed.jsonl", "chat.jsonl", "arr.json"):
        assert got[name]["ok"] and got[name]["tokens"]["sequences"] > 0, got[name]
    # Under "drop" the long line is dropped and said so; a file that would lose every example fails.
    p = cli("validate", "--json", "-b", drop, tmp_path / "long.jsonl", tmp_path / "all-long.jsonl", check=False)
    r_long, r_all = json.loads(p.stdout)
    assert r_long["ok"] and r_long["tokens"]["dropped"] == 1
    assert not r_all["ok"] and "no trainable examples are left" in r_all["reason"] and p.returncode == 1
    # Outside a base dir: structure only, and it says which checks it could not do.
    env = {k: v for k, v in os.environ.items() if k != "TRAINERD_BASE_DIR"}
    p = cli("validate", tmp_path / "seed.jsonl", tmp_path / "chat.jsonl", cwd=tmp_path, env=env, check=False)
    assert p.returncode == 1 and "unknown format" in p.stdout and "[data.map]" in p.stderr
    assert "not\nchecked" in p.stderr or "not checked" in p.stderr
    inside = cli("validate", tmp_path / "seed.jsonl", cwd=base, env=env)
    assert "ok" in inside.stdout and "3 examples" in inside.stdout


@pytest.mark.slow
def test_a_paused_daemon_still_gives_verdicts(tmp_path, tiny_model):
    """Files delivered while paused are tokenized then: an unrenderable one fails at once,
    with the template's message and its line, not when the daemon is resumed."""
    base = make_base(tmp_path / "base", T.save_model_with_template("mistral", tiny_model, tmp_path / "mistral"))
    layout = Layout.at(base)
    cli("pause", "--base-dir", base)
    with daemon(base) as d:
        bad = chat_rows(2) + [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                            {"role": "assistant", "content": "c"}]}]
        write_jsonl(base / "inbox" / "alternation.jsonl", bad)
        write_jsonl(base / "inbox" / "fine.jsonl", chat_rows(4))
        failed = wait_for(lambda: _job(layout, "failed", "alternation"), timeout=180, what="failed while paused")
        err = atomic.read_json(failed / "error.json")
        assert err["stage"] == "tokenizing"
        assert "line 3: the model's chat template refuses this conversation: Conversation roles must alternate" \
            in err["reason"]
        fine = wait_for(lambda: _job(layout, "queued", "fine"), timeout=30, what="fine queued")
        wait_for(lambda: (fine / TOKEN_CACHE / "manifest.json").exists(), timeout=120, what="fine tokenized")
        assert not list(layout.active.iterdir())  # still paused: nothing trained
        d.send_signal(signal.SIGTERM)
        d.wait(60)
