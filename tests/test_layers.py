"""The layering of issue 17 (face -> daemon -> worker -> domain -> core, no cycles, the
training stack only in trainerd.worker), as import-linter contracts in pyproject.toml.
Lazy imports inside functions count: a CLI command that imports torch "only when asked"
still loads it into the process that asked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.exists(), f"{exe} missing: `./scripts/setup.sh` installs the test extra (import-linter)"
    env = dict(os.environ, PYTHONPATH=str(src))  # analyse this tree, not whatever is installed
    return subprocess.run([str(exe), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_layering_contracts_hold():
    r = lint_imports(ROOT, ROOT / "src")
    assert r.returncode == 0, f"import layering broken (pyproject.toml [tool.importlinter]):\n{r.stdout}{r.stderr}"
    assert "0 broken" in r.stdout


def test_a_lazy_torch_import_outside_the_worker_breaks_them(tmp_path):
    """The contracts are live: one `import torch` inside a function of the model line, and
    an import of the daemon from the domain, each fail the check with the culprit named."""
    shutil.copytree(ROOT / "src" / "trainerd", tmp_path / "src" / "trainerd",
                    ignore=shutil.ignore_patterns("__pycache__", "static", "samples"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    versions = tmp_path / "src" / "trainerd" / "line" / "versions.py"
    versions.write_text(versions.read_text() + "\n\ndef _sneaky():\n    import torch\n\n    return torch\n")
    gate = tmp_path / "src" / "trainerd" / "gate.py"
    gate.write_text(gate.read_text() + "\n\ndef _upwards():\n    from trainerd import supervisor\n\n    return supervisor\n")
    r = lint_imports(tmp_path, tmp_path / "src")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "trainerd.line.versions -> torch" in r.stdout, r.stdout
    assert "trainerd.gate is not allowed to import trainerd.supervisor" in r.stdout, r.stdout


def test_every_module_but_the_worker_is_kept_off_the_training_stack():
    """The torch contract lists its modules one by one (a package-wide rule would also
    exempt chains through the worker): a new module must join the list."""
    import pkgutil
    import tomllib

    import trainerd

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    [torch_free] = [c for c in contracts if "torch" in c.get("forbidden_modules", [])]
    modules = {f"trainerd.{m.name}" for m in pkgutil.iter_modules(trainerd.__path__)} - {"trainerd.worker"}
    assert modules == set(torch_free["source_modules"]), \
        "pyproject.toml: the torch contract's source_modules must list every module outside trainerd.worker"
