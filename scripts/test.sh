#!/usr/bin/env bash
# The test suite: same set-up as the demo, then pytest (all tests, slow ones included).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
