#!/usr/bin/env bash
# The test suite: same set-up as the demo, then pytest (all tests, slow ones included).
# The dashboard's browser test needs Chromium (Debian package) and playwright (PyPI);
# they are installed here when possible (root + apt), else that one test skips with a reason.
# TRAINERD_NO_BROWSER=1 skips the install.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# promtool (Debian `prometheus`) checks /metrics and docs/monitoring/; systemd-analyze
# (Debian `systemd`) scores the unit. Under CI=1 their tests fail instead of skipping.
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ "${#need[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") \
    >/dev/null 2>&1 || echo "note: ${need[*]} not installed; the promtool / systemd-analyze tests will skip" >&2
fi
if [ -z "${TRAINERD_NO_BROWSER:-}" ]; then
  if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) >/dev/null 2>&1 \
      || echo "note: chromium not installed; the dashboard browser test will skip" >&2
  fi
  .venv/bin/python -c "import playwright" 2>/dev/null \
    || .venv/bin/pip install --quiet --disable-pip-version-check "playwright>=1.45" >/dev/null 2>&1 \
    || echo "note: playwright not installed; the dashboard browser test will skip" >&2
fi
# The power-cut tests (tests/chaos/test_chaos_power.py, test_powerfs.py) run the base dir on
# a FUSE filesystem: fusermount3 (Debian fuse3) and the mfusepy binding (PyPI), installed
# here when possible; without them those tests skip and say which is missing.
# TRAINERD_NO_FUSE=1 skips the install.
if [ -z "${TRAINERD_NO_FUSE:-}" ]; then
  if ! command -v fusermount3 >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends fuse3) >/dev/null 2>&1 \
      || echo "note: fuse3 not installed; the power-cut tests will skip" >&2
  fi
  .venv/bin/python -c "import mfusepy" 2>/dev/null \
    || .venv/bin/pip install --quiet --disable-pip-version-check "mfusepy>=3.1,<4" >/dev/null 2>&1 \
    || echo "note: mfusepy not installed; the power-cut tests will skip" >&2
fi
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
