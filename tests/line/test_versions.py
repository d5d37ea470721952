"""Version names and the line's torch-freedom."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import trainerd.line
from tests.line.conftest import fake_version
from trainerd.line.versions import is_version, next_name, version_number, versions


def test_names_sort_by_number_and_the_next_one_is_never_reused(layout):
    assert next_name(layout) == "v0001"  # no models/ folder yet
    for name in ("v0002", "v9999", "v10000"):
        fake_version(layout, name)
    (layout.models / "v12").mkdir()  # too short: not a version
    (layout.models / "rejected-v0003-of-v0002-x").mkdir()
    assert versions(layout) == ["v0002", "v9999", "v10000"]
    assert next_name(layout) == "v10001"
    assert version_number("v0010") == 10 and version_number("v10") is None
    assert is_version("v10000") and not is_version("vabcd") and not is_version("current")


def test_every_line_module_imports_without_torch():
    """The daemon and the CLI import the line; none of it may bring the training stack."""
    names = [f"trainerd.line.{m.name}" for m in pkgutil.iter_modules(trainerd.line.__path__)]
    assert {"trainerd.line.versions", "trainerd.line.commit", "trainerd.line.daily"} <= set(names)
    code = (f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\n"
            "import trainerd.schedule\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
