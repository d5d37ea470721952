#!/usr/bin/env bash
# Create .venv and install trainerd with its test tools. Idempotent; needs only Python 3.11.
# torch and the HF stack are pinned through constraints.txt: an unpinned torch would pull a
# multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.trainerd-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
