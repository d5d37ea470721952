#!/usr/bin/env bash
# The demo: set up, build a tiny model, drop the sample files, train until done, show status.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
BASE=${TRAINERD_DEMO_DIR:-demo}
export HF_HUB_OFFLINE=1
.venv/bin/trainerd init --base-dir "$BASE" --tiny-model --samples
.venv/bin/trainerd run --base-dir "$BASE" --once
.venv/bin/trainerd status --base-dir "$BASE"
.venv/bin/trainerd models list --base-dir "$BASE"
