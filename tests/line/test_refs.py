"""Which model a name stands for, read from files only (the CLI checks a version before
any model loads)."""

from __future__ import annotations

import pytest

from trainerd import atomic
from trainerd.config import Config
from trainerd.line.refs import NoSuchModel, resolve, set_current
from trainerd.paths import Layout


def test_a_model_is_named_by_version_current_base_or_folder(tmp_path):
    """resolve() reads files only (the CLI checks a version before any model loads)."""
    layout = Layout.at(tmp_path / "base")
    layout.ensure()
    cfg = Config.model_validate({"base_model": "/models/tiny"})
    v1 = layout.models / "v0001"
    v1.mkdir()
    (v1 / "adapter_config.json").write_text('{"base_model_name_or_path": "/elsewhere"}')
    atomic.write_manifest(v1, {"version": "v0001", "parent": "base", "kind": "adapter", "base": "/models/tiny"})
    assert resolve(layout, cfg, "current").version == "base"  # nothing published yet
    set_current(layout, "v0001")
    for spec in ("v0001", "current", str(v1)):
        ref = resolve(layout, cfg, spec)
        assert (ref.version, ref.kind, ref.base, ref.path) == ("v0001", "adapter", "/models/tiny", v1)
    assert resolve(layout, cfg, "base").base == "/models/tiny"

    export = tmp_path / "export"  # a plain HF adapter folder: its own config names the base
    export.mkdir()
    (export / "adapter_config.json").write_text('{"base_model_name_or_path": "/elsewhere"}')
    assert (resolve(layout, cfg, str(export)).kind, resolve(layout, cfg, str(export)).base) == ("adapter", "/elsewhere")
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    assert resolve(layout, cfg, str(full)).kind == "full" and resolve(layout, cfg, str(full)).base == str(full)

    with pytest.raises(NoSuchModel, match="models list"):
        resolve(layout, cfg, "v0042")
    with pytest.raises(NoSuchModel, match="not a version"):
        resolve(layout, cfg, str(tmp_path / "nothing"))
    (v1 / "adapter_config.json").write_text("{}")  # edited after publishing: its size no longer matches
    with pytest.raises(NoSuchModel, match="cannot be loaded"):
        resolve(layout, cfg, "v0001")
