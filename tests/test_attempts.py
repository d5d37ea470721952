"""The attempt policy (trainerd.attempts), table by table, without processes: every outcome
the supervisor handles, with and without attempts left, with and without a skip wish; and
the daemon-death rule carried out at start-up on a real queue."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import chat_rows, make_base, write_jsonl
from trainerd.attempts import COLD_STOP, PREEMPT_PREFIX, Action, Do, Ended, classify, decide
from trainerd.config import Config
from trainerd.jobs import Attempt, JobMeta, JobState, Outcome, Priority
from trainerd.paths import Layout

CFG = Config(base_model="unused")  # max_attempts 3, back-off 30 / 120 / 600 s, micro-batch 8
LIMIT = CFG.queue.max_attempts
WHY = "worker killed by SIGKILL: ...out of patience"


def meta_after(outcome: Outcome, *, before: list[Outcome] = (), **fields) -> JobMeta:
    """job.json as decide() sees it: the attempt that just ended is the last, recorded."""
    runs = [*before, outcome]
    return JobMeta(id="20260101T000000-000001-x", original_name="x.jsonl", sha256="", size=0, examples=4,
                   attempts=[Attempt(number=i + 1, started_at=0, ended_at=1, outcome=o) for i, o in enumerate(runs)],
                   **fields)


# ---------------------------------------------------------------------------- classify
CLASSIFY = [
    # (what the supervisor saw, outcome, error)
    (Ended(said=0, rc=0), Outcome.FINISHED, None),
    (Ended(said=3, rc=3, stop_reason="paused"), Outcome.STOPPED, None),
    (Ended(said=4, rc=4, worker_reason=WHY), Outcome.DATA_ERROR, WHY),
    (Ended(said=5, rc=5, worker_reason=WHY), Outcome.RESOURCE_ERROR, WHY),
    (Ended(said=6, rc=6, worker_reason=WHY), Outcome.DISK_LOW, WHY),
    (Ended(said=7, rc=7, worker_reason=WHY), Outcome.NONFINITE, WHY),
    (Ended(said=8, rc=8, worker_reason=WHY), Outcome.MODEL_UNAVAILABLE, WHY),
    (Ended(said=-9, rc=-9, worker_reason=WHY), Outcome.CRASHED, WHY),
    (Ended(said=1, rc=1, worker_reason=WHY), Outcome.CRASHED, WHY),
    # SIGTERM nobody sent (no stop reason): a crash.
    (Ended(said=-15, rc=-15, worker_reason=WHY), Outcome.CRASHED, WHY),
    # A stall counts whatever the worker did when asked to stop...
    (Ended(said=3, rc=3, stall="no step for 60 s", stop_reason="stalled"), Outcome.STALLED,
     "no step for 60 s; then exit 3 (stopped)"),
    (Ended(said=-9, rc=-9, stall="no step for 60 s", stop_reason="stalled"), Outcome.STALLED,
     "no step for 60 s; then killed by SIGKILL"),
    # ...unless it finished, or said the model is gone (the daemon pauses for that).
    (Ended(said=0, rc=0, stall="no step for 60 s"), Outcome.FINISHED, None),
    (Ended(said=8, rc=8, stall="no step for 60 s", worker_reason=WHY), Outcome.MODEL_UNAVAILABLE, WHY),
    (Ended(said=-9, rc=-9, stop_reason=COLD_STOP), Outcome.STOPPED, "cold stop: worker killed without a checkpoint"),
    (Ended(said=0, rc=0, stop_reason=COLD_STOP), Outcome.FINISHED, None),
    # Our stop reached a worker still starting (no handler yet): nothing lost, not a crash.
    (Ended(said=-15, rc=-15, stop_reason="paused"), Outcome.STOPPED, "stopped while the worker was starting"),
    (Ended(said=1, rc=1, group=True, stop_reason="paused"), Outcome.STOPPED, "stopped while the worker was starting"),
    # A group: rank 0's word (said) stands over torchrun's status.
    (Ended(said=3, rc=1, group=True, stop_reason="paused"), Outcome.STOPPED, None),
    (Ended(said=4, rc=1, group=True, worker_reason=WHY), Outcome.DATA_ERROR, WHY),
    # Published, then died on the way out: done, never failed or trained twice.
    (Ended(said=-15, rc=-15, stop_reason="skip", published=True), Outcome.FINISHED, "published, then killed by SIGTERM"),
    (Ended(said=-9, rc=-9, published=True, worker_reason=WHY), Outcome.FINISHED, "published, then killed by SIGKILL"),
    (Ended(said=0, rc=0, published=True), Outcome.FINISHED, None),
    # queue.preempt: our warm stop for a higher-priority job, at a step or while starting...
    (Ended(said=3, rc=3, stop_reason=PREEMPT_PREFIX + "J"), Outcome.PREEMPTED, PREEMPT_PREFIX + "J"),
    (Ended(said=-15, rc=-15, stop_reason=PREEMPT_PREFIX + "J"), Outcome.PREEMPTED, PREEMPT_PREFIX + "J"),
    (Ended(said=3, rc=1, group=True, stop_reason=PREEMPT_PREFIX + "J"), Outcome.PREEMPTED, PREEMPT_PREFIX + "J"),
    # ...but a worker that finished first is done, and one that failed failed.
    (Ended(said=0, rc=0, stop_reason=PREEMPT_PREFIX + "J"), Outcome.FINISHED, None),
    (Ended(said=5, rc=5, stop_reason=PREEMPT_PREFIX + "J", worker_reason=WHY), Outcome.RESOURCE_ERROR, WHY),
    (Ended(said=-9, rc=-9, stop_reason=PREEMPT_PREFIX + "J", worker_reason=WHY), Outcome.CRASHED, WHY),
]


@pytest.mark.parametrize(("ended", "outcome", "error"), CLASSIFY)
def test_classify(ended, outcome, error):
    assert classify(ended) == (outcome, error)


def test_sigterm_is_the_signal_the_classification_means():
    assert -signal.SIGTERM == -15 and -signal.SIGKILL == -9  # the table's literal statuses


# ---------------------------------------------------------------------------- decide
COUNTED = (Outcome.CRASHED, Outcome.STALLED, Outcome.INTERRUPTED, Outcome.DATA_ERROR)
EVERY = [o for o in Outcome if o != Outcome.SKIPPED]  # SKIPPED is a history word, never an attempt's end


def expected(outcome: Outcome, left: bool) -> Do:
    """What the supervisor did before the policy had a module of its own."""
    if outcome == Outcome.FINISHED:
        return Do.DONE
    if outcome == Outcome.STOPPED:
        return Do.STAY
    if outcome == Outcome.PREEMPTED:
        return Do.REQUEUE  # to the front, no back-off (tested below)
    if outcome == Outcome.DISK_LOW:
        return Do.PAUSE_DISK
    if outcome == Outcome.MODEL_UNAVAILABLE:
        return Do.PAUSE_MODEL
    if outcome in (Outcome.RESOURCE_ERROR, Outcome.NONFINITE):
        return Do.STAY  # their own limits: micro-batch 1, a second divergence (tested below)
    if outcome == Outcome.DATA_ERROR:
        return Do.FAIL  # the file's fault: no retry, attempts left or not
    if not left:
        return Do.FAIL
    return Do.STAY if outcome == Outcome.INTERRUPTED else Do.REQUEUE


@pytest.mark.parametrize("outcome", EVERY)
@pytest.mark.parametrize("left", [True, False], ids=["attempts-left", "last-attempt"])
@pytest.mark.parametrize("skipped", [False, True], ids=["no-wish", "skip-wish"])
def test_decide_every_outcome_attempts_left_and_skip(outcome, left, skipped):
    before = [] if left else [Outcome.CRASHED] * (LIMIT - 1)
    meta = meta_after(outcome, before=before)
    act = decide(outcome, WHY, meta, CFG, skipped=skipped, skip_reason="wrong file" if skipped else None)
    if skipped and outcome != Outcome.FINISHED:
        # A skip wins over every other outcome; the job can be requeued later.
        assert act == Action(Do.FAIL, "skipped by user: wrong file", stage="skip", detail={"resumable": True},
                             clear_skip=True, note={"event": "skipped", "reason": "wrong file"})
        return
    assert act.do == expected(outcome, left), act
    assert act.clear_skip == skipped  # a skip that came too late is used up, not left for the next job
    if act.do == Do.FAIL and outcome != Outcome.DATA_ERROR:
        assert act.reason.startswith(f"gave up after {LIMIT} failed attempt(s)"), act.reason
        assert act.detail == {"attempts": LIMIT} and act.stage == "training"
    if act.do == Do.REQUEUE and outcome != Outcome.PREEMPTED:
        assert act.delay == CFG.queue.backoff_seconds[0] and f"retry 1/{LIMIT - 1} in 30s" in act.warning


def test_back_off_grows_with_own_failures_and_a_daemon_death_earns_none():
    assert decide(Outcome.CRASHED, WHY, meta_after(Outcome.CRASHED, before=[Outcome.CRASHED]), CFG).delay == 120
    # Two earlier deaths of the daemon count as attempts but not toward the back-off.
    two_deaths = meta_after(Outcome.CRASHED, before=[Outcome.INTERRUPTED, Outcome.INTERRUPTED])
    assert decide(Outcome.CRASHED, WHY, two_deaths, CFG).do == Do.FAIL  # 3 of 3 counted
    one_death = meta_after(Outcome.STALLED, before=[Outcome.INTERRUPTED])
    act = decide(Outcome.STALLED, WHY, one_death, CFG)
    assert (act.do, act.delay) == (Do.REQUEUE, 30)
    # Stops, full disks and fallbacks in between are not attempts.
    calm = meta_after(Outcome.CRASHED, before=[Outcome.STOPPED, Outcome.DISK_LOW, Outcome.RESOURCE_ERROR,
                                                Outcome.NONFINITE, Outcome.MODEL_UNAVAILABLE])
    assert decide(Outcome.CRASHED, WHY, calm, CFG).delay == 30


def test_a_preempted_job_goes_back_first_without_back_off_and_is_not_an_attempt():
    meta = meta_after(Outcome.PREEMPTED, before=[Outcome.CRASHED] * (LIMIT - 1))  # even on its last attempt
    assert meta.failed_attempts == LIMIT - 1 and not Outcome.PREEMPTED.counts_as_attempt
    act = decide(Outcome.PREEMPTED, PREEMPT_PREFIX + "20260101T000000-000002-urgent", meta, CFG)
    assert act == Action(Do.REQUEUE, front=True, changes={"preempted_by": "20260101T000000-000002-urgent"},
                         note={"event": "preempted", "by": "20260101T000000-000002-urgent"})
    # The stop the user asked for wins over the preemption the daemon asked for.
    skipped = decide(Outcome.PREEMPTED, PREEMPT_PREFIX + "x", meta, CFG, skipped=True, skip_reason=None)
    assert skipped.do == Do.FAIL and skipped.stage == "skip"


def test_the_daemons_death_is_an_attempt_without_back_off():
    act = decide(Outcome.INTERRUPTED, "the daemon stopped", meta_after(Outcome.INTERRUPTED), CFG)
    assert act == Action(Do.STAY)
    last = decide(Outcome.INTERRUPTED, "x", meta_after(Outcome.INTERRUPTED, before=[Outcome.INTERRUPTED] * 2), CFG)
    assert last.do == Do.FAIL and "cut short by the daemon's own death" in last.reason
    assert "`trainerd queue requeue`" in last.reason and last.detail == {"attempts": 3}


def test_out_of_memory_halves_the_micro_batch_down_to_one_then_fails():
    seen = []
    meta = meta_after(Outcome.RESOURCE_ERROR)
    while (act := decide(Outcome.RESOURCE_ERROR, "CUDA out of memory", meta, CFG)).do == Do.STAY:
        assert act.note == {"event": "oom_fallback", "micro_batch_size": act.changes["micro_batch_size"]}
        meta.micro_batch_size = act.changes["micro_batch_size"]
        seen.append(meta.micro_batch_size)
    assert seen == [4, 2, 1]  # divisors of the effective batch 8: the same examples per step
    assert act.do == Do.FAIL and act.reason.startswith("out of memory even at micro-batch 1: CUDA out of memory")


def test_a_second_divergence_fails_the_job():
    first = decide(Outcome.NONFINITE, "loss is nan at step 7", meta_after(Outcome.NONFINITE), CFG)
    assert (first.do, first.changes) == (Do.STAY, {"nonfinite_events": 1})
    assert "retrying once from the last good checkpoint" in first.warning
    again = decide(Outcome.NONFINITE, "loss is nan", meta_after(Outcome.NONFINITE, nonfinite_events=1), CFG)
    assert again == Action(Do.FAIL, "training diverged twice on the same data: loss is nan",
                           changes={"nonfinite_events": 2})


def test_disk_full_and_model_missing_pause_with_the_workers_reason():
    assert decide(Outcome.DISK_LOW, None, meta_after(Outcome.DISK_LOW), CFG) == Action(Do.PAUSE_DISK, "disk full")
    assert decide(Outcome.DISK_LOW, "12 MB free", meta_after(Outcome.DISK_LOW), CFG).reason == "12 MB free"
    gone = decide(Outcome.MODEL_UNAVAILABLE, None, meta_after(Outcome.MODEL_UNAVAILABLE), CFG)
    assert gone == Action(Do.PAUSE_MODEL, "the model cannot be loaded")


def test_a_version_the_gate_holds_still_makes_the_job_done():
    held = meta_after(Outcome.FINISHED, gate={"action": "held", "verdict": "held: probe loss +12 % vs v0007"})
    assert decide(Outcome.FINISHED, None, held, CFG) == Action(Do.DONE)


def test_a_data_error_fails_at_once_with_a_warning():
    act = decide(Outcome.DATA_ERROR, "line 3: not JSON", meta_after(Outcome.DATA_ERROR), CFG)
    assert act == Action(Do.FAIL, "line 3: not JSON", detail={"attempts": 1},
                         warning="data error, sent to failed/: line 3: not JSON")


# ---------------------------------------------------------------------------- carried out
def test_start_up_quarantines_a_job_whose_attempts_all_took_the_daemon_down(tmp_path):
    """The policy as the supervisor carries it out at start-up, on a real queue: each
    attempt died with the daemon (kill -9, OOM killer, power cut)."""
    from trainerd.config import load_config
    from trainerd.supervisor import Supervisor

    base = make_base(tmp_path / "b", "unused-model", "[queue]\nmax_attempts = 2\n")
    layout = Layout.at(base)
    sup = Supervisor(layout, load_config(layout.config))
    sup.queue.submit(write_jsonl(tmp_path / "bomb.jsonl", chat_rows(2)))
    ref = sup.queue.claim()
    sup.queue.record_attempt_start(ref, 123, Priority.NORMAL)
    sup._recover_interrupted()
    [ref] = sup.queue.list()
    assert ref.state == JobState.ACTIVE and ref.meta().not_before == 0  # resumed first, no back-off
    sup.queue.record_attempt_start(ref, 124, Priority.NORMAL)
    sup._recover_interrupted()
    [ref] = sup.queue.list()
    assert ref.state == JobState.FAILED
    assert [a.outcome for a in ref.meta().attempts] == [Outcome.INTERRUPTED, Outcome.INTERRUPTED]
    assert "daemon's own death" in (ref.path / "error.json").read_text()
