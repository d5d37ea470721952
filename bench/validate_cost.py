"""CPU time of the intake validator per small file, for this checkout and another one.

    .venv/bin/python bench/validate_cost.py [OTHER_SRC ...]

Runs 10,000 in-memory files of 3 chat examples through the validator intake uses
(`check_stream`, or `validate_stream` in older checkouts) in a fresh interpreter per
source tree, and prints CPU milliseconds per file. CPU time, not wall time, so the figure
holds on a loaded machine. To compare with an older commit:
`git worktree add /tmp/old COMMIT` and pass `/tmp/old/src`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = r"""
import io, json, sys, time
sys.path.insert(0, sys.argv[1])
import trainerd.validate as V
rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(3)]
data = "".join(json.dumps(r) + "\n" for r in rows).encode()
check = getattr(V, "check_stream", None) or V.validate_stream
t = time.process_time()
for _ in range(10000):
    check(io.BufferedReader(io.BytesIO(data)), "x.jsonl")
print(f"{(time.process_time() - t) * 1e3 / 10000:.4f}")
"""


def main() -> None:
    here = Path(__file__).resolve().parent.parent / "src"
    for src in [str(here), *sys.argv[1:]]:
        ms = subprocess.run([sys.executable, "-c", PROBE, src], capture_output=True, text=True, check=True)
        print(f"{src}: {ms.stdout.strip()} ms CPU per 3-example file")


if __name__ == "__main__":
    main()
