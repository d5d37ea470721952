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
    assert c["daemons_started"] == 20 and c["rounds"] == 1
    # Every add said "queued" (exit 0), and each is one job: trained, removed by a remove
    # that said so, or still waiting; none failed (every file is good), none doubled.
    adds = sum(v for k, v in c.items() if k.startswith("add:"))
    assert adds == c.get("add:0", 0) == c["files_added"] >= 1
    assert c["files_added"] == c["jobs_done"] + c.get("remove:ok", 0) + c["jobs_waiting"]
    assert c["jobs_failed"] == 0
    # A floor, not a count (how many ops fit in 10 s is the machine's speed): the race
    # this campaign is about must have happened at least once.
    assert c.get("remove:ok", 0) + c.get("remove:refused", 0) + c.get("move:ok", 0) + c.get("move:refused", 0) > 0
    assert tally.violations == [], f"seed {c['seed']}:\n" + "\n".join(tally.violations[:10])
