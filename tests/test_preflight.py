"""base_model is checked before anything trains (issue 14): at start (exit 2 with a
sentence naming base_model), on SIGHUP, and while running (a pause, not burnt attempts)."""

import json
import os
import shutil
import signal

import pytest

from tests.conftest import chat_rows, cli, daemon, daemon_log, make_base, wait_for, write_jsonl
from trainerd.paths import Layout
from trainerd.preflight import hf_cache_dir, locate

RAISING_TEMPLATE = "{{ raise_exception('this template refuses everything') }}"


def test_locate_finds_local_dirs_and_cached_hub_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hf_cache_dir() == tmp_path / "hub"
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    assert locate("org/name") is None  # a snapshot without config.json is not a model
    (snap / "config.json").write_text("{}")
    assert locate("org/name") == snap
    assert locate(str(snap)) == snap and locate(str(tmp_path / "nope")) is None
    assert locate("org/other") is None


def test_a_missing_base_model_refuses_to_start_with_exit_2(tmp_path):
    base = make_base(tmp_path / "b", tmp_path / "no-such-model")
    write_jsonl(base / "inbox" / "a.jsonl", chat_rows(2))
    p = cli("run", "--base-dir", base, "--once", check=False, timeout=120)
    assert p.returncode == 2, p.stderr
    err = " ".join(p.stderr.split())
    assert "base_model" in err and "no-such-model" in err and "trainerd.toml" in err
    assert "local model folder" in err  # what to do
    assert os.listdir(Layout.at(base).failed) == []  # no job paid for it


@pytest.mark.slow
def test_a_template_that_raises_refuses_to_start_and_a_good_model_is_remembered(tmp_path, tiny_model):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "chat_template.jinja").write_text(RAISING_TEMPLATE)
    base = make_base(tmp_path / "b", model)
    p = cli("run", "--base-dir", base, "--once", check=False, timeout=240)
    assert p.returncode == 2, p.stderr
    err = " ".join(p.stderr.split())
    assert "base_model" in err and "chat template" in err and "refuses everything" in err

    shutil.copy(tiny_model / "chat_template.jinja", model / "chat_template.jinja")
    p = cli("run", "--base-dir", base, "--once", timeout=240)
    assert "checked in" in p.stderr
    p = cli("run", "--base-dir", base, "--once", timeout=240)  # nothing changed: no child process
    assert "unchanged since the last check" in p.stderr


def _state(base):
    try:
        return json.loads((Layout.at(base).status).read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_a_model_that_breaks_or_disappears_later_pauses_without_burning_attempts(tmp_path, tiny_model):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    base = make_base(tmp_path / "b", model)
    layout = Layout.at(base)
    with daemon(base) as d:
        wait_for(lambda: _state(base).get("state") == "idle", 240, what="the daemon to be up")
        # The template breaks while the daemon runs: the worker finds out (exit 8).
        (model / "chat_template.jinja").write_text(RAISING_TEMPLATE)
        write_jsonl(base / "inbox" / "a.jsonl", chat_rows(8))
        wait_for(lambda: _state(base).get("state") == "paused_model", 240, what="a pause for the model")
        assert "chat template" in _state(base)["paused_reason"]
        assert "chat template" in cli("status", "--base-dir", base).stdout

        # Fixed, but now the folder is gone: SIGHUP re-checks, and it stays paused, saying why.
        shutil.copy(tiny_model / "chat_template.jinja", model / "chat_template.jinja")
        os.rename(model, tmp_path / "moved-away")
        d.send_signal(signal.SIGHUP)
        wait_for(lambda: "neither a local model directory" in (_state(base).get("paused_reason") or ""), 120,
                 what="the pause to name the missing folder")
        assert _state(base)["state"] == "paused_model"

        os.rename(tmp_path / "moved-away", model)
        d.send_signal(signal.SIGHUP)
        wait_for(lambda: os.listdir(layout.done), 300, what="the job to train once the model is back")
        d.send_signal(signal.SIGTERM)
        assert d.wait(timeout=120) == 0, daemon_log(base)
    [done] = os.listdir(layout.done)
    meta = json.loads((layout.done / done / "job.json").read_text())
    assert [a["outcome"] for a in meta["attempts"]] == ["model_unavailable", "finished"]
    assert os.listdir(layout.failed) == []
