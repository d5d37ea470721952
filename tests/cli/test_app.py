"""The app as an operator meets it (trainerd/cli/__init__.py): --version, shell completion,
the help text of the commands it registers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli
from trainerd import __version__

ENTRY = Path(sys.executable).parent / "trainerd"  # the installed console script


def test_version_completion_and_gc_help():
    assert cli("--version").stdout.strip() == f"trainerd {__version__}"
    helptext = cli("--help").stdout
    assert "--install-completion" in helptext and "--show-completion" in helptext
    # From a shell, as an operator runs it: typer finds the shell among its ancestors
    # (shellingham), which a test run in the background (its parent gone) does not have.
    # `; exit $?` keeps bash from exec'ing the command, so bash stays its parent.
    p = subprocess.run(["bash", "-c", f"'{ENTRY}' --show-completion; exit $?"], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, COLUMNS="200"))
    assert p.returncode == 0 and "_TRAINERD_COMPLETE" in p.stdout, p.stdout + p.stderr
    assert "Apply [retention]:" in cli("gc", "--help", env=dict(os.environ, COLUMNS="200")).stdout
