"""Hand-made versions for the line's tests: folders with real manifests and random bytes
for weights (the line never loads them)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import cli
from trainerd import atomic
from trainerd.line.refs import set_current
from trainerd.paths import Layout


@pytest.fixture
def layout(tmp_path) -> Layout:
    lay = Layout.at(tmp_path / "base")
    lay.ensure()
    (tmp_path / "hf-base").mkdir()  # stands in for the configured base_model folder
    return lay


def fake_version(layout: Layout, name: str, kind: str = "adapter", parent: str = "base",
                 base: str | None = None, nbytes: int = 1000) -> Path:
    """A version folder as publish writes it (weights, tokenizer, manifest last)."""
    d = layout.models / name
    d.mkdir(parents=True)
    weights = "adapter_model.safetensors" if kind == "adapter" else "model.safetensors"
    (d / weights).write_bytes(os.urandom(nbytes))
    (d / "tokenizer.json").write_text("{}")
    if kind == "adapter":
        (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "elsewhere"}))
        base = base or str(layout.base.parent / "hf-base")
    atomic.write_manifest(d, {"version": name, "parent": parent, "kind": kind,
                              "base": base if kind == "adapter" else None,
                              "jobs": [{"id": f"job-{name}", "name": f"{name}.jsonl"}],
                              "created_at": time.time()})
    return d


def line(layout: Layout) -> None:
    """v1 -> v2 (adapters on the base model) -> v3 (full, merged v2) -> v4 -> v5 (adapters on v3)."""
    fake_version(layout, "v0001")
    fake_version(layout, "v0002", parent="v0001")
    fake_version(layout, "v0003", kind="full", parent="v0002", nbytes=5000)
    fake_version(layout, "v0004", parent="v0003", base=str(layout.models / "v0003"))
    fake_version(layout, "v0005", parent="v0004", base=str(layout.models / "v0003"))
    set_current(layout, "v0005")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def run_once(base: Path) -> None:
    """The daemon trains everything in the inbox, then exits."""
    cli("run", "--base-dir", base, "--once", timeout=600)
