#!/usr/bin/env bash
# The first GPU: every figure of docs/BENCHMARKS.md "On a GPU" in one run of < 10 minutes.
#
#   bash bench/gpu.sh [--json FILE] [--only lora,qlora] ...     # on a lent CUDA machine
#   bash bench/gpu.sh --dry-run                                   # anywhere (tests/bench)
#
# The GPU machine has no network and its own CUDA torch and transformers. Whatever else is
# missing there (bitsandbytes for QLoRA, peft, accelerate, pydantic, psutil) is installed
# from bench/wheels/ (made beforehand by bench/fetch-wheels.sh, carried with the project)
# into a private directory, never over that machine's own packages. PYTHON picks the
# interpreter (default: python3 on PATH). The driver is bench/gpu_bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEPS=${TRAINERD_BENCH_DEPS:-${TMPDIR:-/tmp}/trainerd-bench-deps}

# import name -> wheel project, for what trainerd's worker and this bench import.
missing=$("$PY" - <<'PYEOF'
import importlib.util
wanted = {"peft": "peft", "accelerate": "accelerate", "pydantic": "pydantic", "pydantic_core": "pydantic-core",
          "annotated_types": "annotated-types", "typing_inspection": "typing-inspection", "psutil": "psutil",
          "bitsandbytes": "bitsandbytes"}
print(" ".join(w for m, w in wanted.items() if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then
  if ls bench/wheels/*.whl >/dev/null 2>&1; then
    echo "installing from bench/wheels into $DEPS: $missing"
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --no-index --no-deps --find-links bench/wheels --target "$DEPS" $missing \
      || echo "warning: some of ($missing) did not install from bench/wheels; the variants needing them report it"
  else
    echo "note: not installed here and no bench/wheels (bench/fetch-wheels.sh makes it): $missing"
  fi
fi
export PYTHONPATH="$PWD/src:$PWD/bench${DEPS:+:$DEPS}${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" bench/gpu_bench.py "$@"
