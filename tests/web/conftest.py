"""Fixtures of the web tests: a base dir, a heartbeat the test controls (the supervisor's
part), and the real server on a real socket (port 0)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import make_base
from trainerd.config import ServerConfig
from trainerd.paths import Layout
from trainerd.web.server import start_server


class Beat:
    """The supervisor's heartbeat, as the test wants it."""

    def __init__(self) -> None:
        self.at: float = time.time()
        self.broken = False

    def __call__(self) -> float:
        if self.broken:
            raise RuntimeError("status unreadable")
        return self.at


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    # No model is loaded by anything here, so the config only needs to name one.
    return Layout.at(make_base(tmp_path / "base", "unused-model"))


@pytest.fixture
def beat() -> Beat:
    return Beat()


@pytest.fixture
def server(layout: Layout, beat: Beat):
    h = start_server(layout, ServerConfig(port=0, max_upload_mb=1), beat)
    yield h
    h.stop()
