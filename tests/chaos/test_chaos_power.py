"""Power cuts on a FUSE disk with a volatile cache (CI version; bench/chaos.py --campaign
power runs a hundred). Needs /dev/fuse, fusermount3 (Debian fuse3) and mfusepy, which
scripts/test.sh installs; without them it skips and says which is missing."""

from __future__ import annotations

import pytest

from tests.chaos import power
from tests.chaos.harness import CI_SCENARIO, chaos_seed
from tests.chaos.powerfs import unavailable

pytestmark = pytest.mark.slow


def test_power_cuts_lose_nothing_acknowledged_and_equal_the_uninterrupted_run(tmp_path, tiny_model, ci_reference):
    why = unavailable()
    if why:
        pytest.skip(why)
    tally = power.campaign(tiny_model, tmp_path, ci_reference, n=6, per_round=6,
                           seed=chaos_seed(), sc=CI_SCENARIO, log=print)
    print(tally.summary())
    assert tally.counts["cuts"] == 6
    assert tally.counts["jobs_done"] == CI_SCENARIO.files * tally.counts["rounds"]
    assert tally.violations == [], f"seed {tally.counts['seed']}:\n" + "\n".join(tally.violations[:10])
