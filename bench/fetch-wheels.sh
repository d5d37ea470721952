#!/usr/bin/env bash
# Download, here (with network), the wheels bench/gpu.sh installs on a lent GPU machine
# (no network; its own CUDA torch and transformers): bitsandbytes for QLoRA, and trainerd's
# worker dependencies that such a machine may lack, at the versions this checkout's .venv
# tested. Into bench/wheels/ (ignored by git; carried with the project, 64 MiB at most).
#
#   bash bench/fetch-wheels.sh            # PYTHONS="3.10 3.11 3.12 3.13" by default
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=bench/wheels
PYTHONS=${PYTHONS:-"3.10 3.11 3.12 3.13"}
LIMIT_MB=64
mkdir -p "$OUT"

# The exact versions of this environment (pydantic-core must match pydantic exactly).
read -r -a PURE <<<"$("$PY" - <<'PYEOF'
from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in
               ("peft", "accelerate", "pydantic", "annotated-types", "typing-inspection")))
PYEOF
)"
CORE=$("$PY" -c 'from importlib.metadata import version; print("pydantic-core==" + version("pydantic-core"))')
PSUTIL=$("$PY" -c 'from importlib.metadata import version; print("psutil==" + version("psutil"))')

dl() { "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$OUT" "$@"; }
dl "${PURE[@]}"
dl --platform manylinux_2_24_x86_64 --python-version 3.11 "bitsandbytes>=0.45"   # py3-none: any python
for v in $PYTHONS; do   # compiled: one wheel per python version (psutil's is abi3)
  dl --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --python-version "$v" "$CORE"
done
dl --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --python-version 3.11 "$PSUTIL"

total=$(du -sm "$OUT" | cut -f1)
ls -1 "$OUT"
echo "bench/wheels: ${total} MiB"
if [ "$total" -gt "$LIMIT_MB" ]; then
  echo "error: bench/wheels is over ${LIMIT_MB} MiB (what travels with the project); drop PYTHONS you do not need" >&2
  exit 1
fi
