"""The dashboard's "try it" box and comparison view against a real daemon: answers come
from a child process, so the daemon's own memory never maps libtorch."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import cli, daemon, daemon_log, wait_for
from trainerd.paths import Layout
from trainerd.web.tokens import read_token


def post(url: str, body: dict, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def torch_mapped(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({ln.split()[-1] for ln in maps.splitlines() if "libtorch" in ln or "/torch/lib/" in ln})


@pytest.mark.slow
def test_dashboard_generates_and_compares_in_a_child_and_the_daemon_never_maps_libtorch(trained_line):
    base = trained_line["base"]
    layout = Layout.at(base)
    expected = json.loads(cli("generate", "--base-dir", base, "--version", "v0002", "--json",
                              "--max-new-tokens", "8", "Say the two code number 4.").stdout)["answer"]
    with daemon(base) as d:
        info = wait_for(lambda: _server(layout, d.pid), timeout=120, what=f"the daemon's HTTP server\n{daemon_log(base)}")
        url, token = info["url"], read_token(layout)
        assert urllib.request.urlopen(url + "static/tryit.js", timeout=30).status == 200

        code, r = post(url + "api/generate", {"prompt": "Say the two code number 4.", "version": "v0002",
                                              "max_new_tokens": 8}, token)
        assert code == 200, r
        assert r["version"] == "v0002" and r["answer"] == expected  # what `trainerd generate` says
        code, r = post(url + "api/compare", {"a": "v0001", "b": "current"}, token)
        assert code == 200, r
        assert r["b"] == "v0002" and len(r["probe"]["rows"]) == 4

        assert post(url + "api/generate", {"prompt": "hi"}, None)[0] == 401
        code, r = post(url + "api/generate", {"prompt": "hi", "version": "../../etc"}, token)
        assert code == 400 and "version" in r["error"]
        code, r = post(url + "api/generate", {"prompt": "hi", "version": "v0042"}, token)
        assert code == 400 and "v0042" in r["error"]

        assert d.poll() is None
        assert torch_mapped(d.pid) == [], "the daemon loaded torch"
        cli("stop", "--base-dir", base)
        d.wait(timeout=120)
    assert d.returncode == 0, daemon_log(base)


def _server(layout: Layout, pid: int) -> dict | None:
    try:
        info = json.loads((layout.run / "server.json").read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("pid") == pid else None



def test_a_refusal_of_the_child_becomes_the_http_answer():
    from trainerd.ask import _answer

    err = "[current on cpu]\nerror: the GPU is busy: job J is training on the GPU. Run with --device cpu\n"
    assert _answer(75, "", err) == (409, {"error": "the GPU is busy: job J is training on the GPU. "
                                          "Run with --device cpu", "exit": 75})
    assert _answer(2, "", "error: no version v0042 in /b/models")[0] == 400
    assert _answer(124, "", "no answer within 300s")[0] == 504
    assert _answer(1, "", "")[1]["error"] == "the generation process ended with no output"
