"""Run the real `trainerd` in a process of its own and say which of the training stack's
modules that process loaded: the CLI never imports torch/transformers/peft (the commands
that need them run the worker's code in a child), nor maps libtorch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "peft")

# At exit (a command ends with SystemExit), written to the report file: what was imported
# and mapped in this process, whatever the command's outcome.
WRAPPER = """
import atexit, json, sys
report, args = sys.argv[1], sys.argv[2:]

def _report():
    with open("/proc/self/maps") as f:
        mapped = sorted({line.split()[-1] for line in f if "libtorch" in line})
    with open(report, "w") as f:
        json.dump({"modules": sorted(m for m in HEAVY if m in sys.modules), "mapped": mapped}, f)

atexit.register(_report)
sys.argv = ["trainerd", *args]
from trainerd.cli import main
main()
""".replace("HEAVY", repr(HEAVY))


def trainerd_watched(report: Path, *args: str | Path, timeout: float = 600,
                     **kw) -> tuple[subprocess.CompletedProcess, list[str]]:
    """(the finished command, the heavy modules it imported or libraries it mapped: [] is right)."""
    p = subprocess.run([sys.executable, "-c", WRAPPER, str(report), *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, **kw)
    seen = json.loads(report.read_text())
    return p, seen["modules"] + seen["mapped"]
