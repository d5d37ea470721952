"""Adding a version: numbered under the models lock, manifest last, `current` moved only
from the parent the job trained on; a held version is written and verified, not current.
The weights here are written by a plain function, as the worker's save would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainerd import atomic
from trainerd.config import Config
from trainerd.jobs import JobMeta
from trainerd.line.commit import commit
from trainerd.line.refs import current, published_version, set_current
from trainerd.line.versions import current_name, versions


def meta(n: int) -> JobMeta:
    return JobMeta(id=f"20261120T000000-00000{n}-job", original_name=f"job{n}.jsonl", sha256="0" * 64,
                   size=1, examples=3)


def adapter(folder: Path) -> str:
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(64))
    (folder / "tokenizer.json").write_text("{}")
    return "adapter"


@pytest.fixture
def cfg(layout) -> Config:
    layout.config.write_text('base_model = "/models/tiny"\n')
    return Config.model_validate({"base_model": "/models/tiny"})


def test_versions_are_numbered_and_made_current_with_a_verified_manifest(layout, cfg):
    base = current(layout, cfg)
    assert commit(layout, adapter, base, meta(1), extra={"examples_trained": 3}) == "v0001"
    man = atomic.verify_manifest(layout.models / "v0001", check_hashes=True)
    assert (man["parent"], man["kind"], man["base"], man["examples_trained"]) == ("base", "adapter", "/models/tiny", 3)
    assert man["jobs"] == [{"id": meta(1).id, "name": "job1.jsonl", "examples": 3}]
    assert current_name(layout) == "v0001"
    assert published_version(layout, cfg, meta(1)) == "v0001"  # a retry would not train it twice
    assert published_version(layout, cfg, meta(2)) is None

    v1 = current(layout, cfg)
    assert commit(layout, adapter, v1, meta(2), make_current=False) == "v0002"  # held by the gate
    assert current_name(layout) == "v0001" and versions(layout) == ["v0001", "v0002"]
    assert not [p for p in os.listdir(layout.models) if p.startswith(".")]


def test_nothing_is_published_over_a_current_that_moved(layout, cfg):
    base = current(layout, cfg)
    commit(layout, adapter, base, meta(1))
    commit(layout, adapter, current(layout, cfg), meta(2))
    set_current(layout, "v0001")  # a rollback while job 3 trained from v0002
    stale = type(base)("v0002", "adapter", "/models/tiny")
    with pytest.raises(RuntimeError, match="current moved from v0002 to v0001"):
        commit(layout, adapter, stale, meta(3))
    assert versions(layout) == ["v0001", "v0002"] and current_name(layout) == "v0001"


def test_a_save_that_says_nonsense_leaves_no_version(layout, cfg):
    def bad(folder: Path) -> str:
        adapter(folder)
        return "weights"

    with pytest.raises(ValueError, match="expected 'adapter' or 'full'"):
        commit(layout, bad, current(layout, cfg), meta(1))
    assert versions(layout) == [] and current_name(layout) is None
    assert not [p for p in os.listdir(layout.models) if p.startswith(".")]  # no half-written folder
