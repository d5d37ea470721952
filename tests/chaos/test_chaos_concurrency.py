"""20 daemons at once, then the CLI's add/remove/move racing the one that won (CI: one
round of 10 s; bench/chaos.py --campaign concurrency runs more)."""

from __future__ import annotations

import pytest

from tests.chaos import concurrency
from tests.chaos.harness import chaos_seed

pytestmark = pytest.mark.slow


def test_one_daemon_and_no_lost_or_doubled_job_under_racing_cli(tmp_path, tiny_model):
    tally = concurrency.campaign(tiny_model, tmp_path, rounds=1, threads=3, seconds=10, seed=chaos_seed(),
                                 log=print)
    c = tally.counts
    assert c["daemons_started"] == 20 and c["files_added"] >= 3
    assert c.get("remove:ok", 0) + c.get("remove:refused", 0) + c.get("move:ok", 0) + c.get("move:refused", 0) > 0
    assert tally.violations == [], f"seed {c['seed']}:\n" + "\n".join(tally.violations[:10])
