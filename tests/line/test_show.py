"""show, list_versions, chain and line_state on hand-made versions with real manifests
(the line never loads weights, so random bytes stand in for them)."""

from __future__ import annotations

import os

import pytest

from tests.line.conftest import line, truncate
from trainerd.line.errors import LineError
from trainerd.line.refs import set_current
from trainerd.line.rollback import rollback
from trainerd.line.show import show
from trainerd.line.versions import chain, line_state, list_versions


def test_list_show_chain_and_line_state(layout):
    line(layout)
    vs = list_versions(layout)
    assert [v.name for v in vs] == ["v0001", "v0002", "v0003", "v0004", "v0005"]
    assert [v.current for v in vs] == [False] * 4 + [True]
    assert vs[4].needs == "v0003" and vs[4].base == str(layout.models / "v0003")
    assert vs[0].needs is None and all(v.problem is None for v in vs)
    assert chain(layout, "v0005") == ["v0005", "v0004", "v0003"]  # stops at the full one
    assert chain(layout, "v0002") == ["v0002", "v0001"]
    st = line_state(layout)
    assert (st.version, st.kind, st.jobs_since_full) == ("v0005", "adapter", 2)
    info = show(layout, "current")
    assert info["name"] == "v0005" and info["ok"] and info["chain"] == ["v0005", "v0004", "v0003"]


def test_corrupt_version_is_detected_and_never_made_current(layout):
    line(layout)
    set_current(layout, "v0002")
    truncate(layout.models / "v0004" / "adapter_model.safetensors")
    info = show(layout, "v0004")
    assert not info["ok"] and "adapter_model.safetensors" in info["problems"][0]
    assert "bytes" in info["problems"][0]  # size mismatch, caught without hashing
    assert next(v for v in list_versions(layout) if v.name == "v0004").problem
    with pytest.raises(LineError, match="refusing to make v0004 current"):
        rollback(layout, "v0004")
    assert os.readlink(layout.current_model) == "v0002"

    # Same size, different bytes: only the sha256 tells; show and rollback hash everything.
    p = layout.models / "v0001" / "adapter_model.safetensors"
    data = bytearray(p.read_bytes())
    data[10] ^= 0xFF
    p.write_bytes(bytes(data))
    assert "sha256" in show(layout, "v0001")["problems"][0]
    with pytest.raises(LineError, match="sha256"):
        rollback(layout, "v0001")

    # An adapter whose full base is damaged cannot be loaded either.
    truncate(layout.models / "v0003" / "model.safetensors")
    with pytest.raises(LineError, match="loads on v0003"):
        rollback(layout, "v0005")
    assert os.readlink(layout.current_model) == "v0002"
