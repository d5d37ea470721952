"""When a warm worker stops offering itself for another job (trainerd.worker.warm.Session),
measured on this very process."""

from __future__ import annotations

import psutil

from trainerd.config import Config
from trainerd.worker.warm import Session, load_key


def test_it_retires_after_n_jobs_or_a_stop():
    s = Session(max_jobs=2)
    s.jobs = 1
    assert s.retire_reason(stopping=False) is None
    assert s.retire_reason(stopping=True) == "a stop was asked"
    s.jobs = 2
    assert "2 jobs" in (s.retire_reason(stopping=False) or "")


def test_it_retires_when_its_memory_grew_by_a_quarter():
    s = Session(max_jobs=100)
    s.jobs = 1
    assert s.retire_reason(stopping=False) is None  # after the first job: the reference
    s.jobs = 2
    assert s.retire_reason(stopping=False) is None  # nothing grew
    n = int(psutil.Process().memory_info().rss * 0.4)
    hog = bytearray(n)
    hog[::4096] = b"x" * len(range(0, n, 4096))  # resident, not just reserved
    s.jobs = 3
    why = s.retire_reason(stopping=False) or ""
    assert why.startswith("its RSS grew from"), why
    del hog


def test_the_load_key_changes_with_the_train_section_and_the_base():
    a = Config(base_model="m")
    assert load_key(a) == load_key(Config(base_model="m"))
    b = Config(base_model="m")
    b.train.lora.r = 4
    assert load_key(b) != load_key(a)
    assert load_key(Config(base_model="other")) != load_key(a)
