"""History at scale: finished jobs in finish order everywhere, and reads that do not
grow with the history (counted in files opened, never in seconds)."""

from __future__ import annotations

import builtins
import io
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.history_scale import build
from tests.conftest import chat_rows, cli, make_base, write_jsonl
from trainerd import history, status
from trainerd.config import QueueConfig, RetentionConfig, ServerConfig
from trainerd.jobs import Outcome, Priority
from trainerd.ledger import Ledger
from trainerd.line.retention import gc
from trainerd.line.rollback import rollback
from trainerd.line.versions import is_version, list_versions, versions
from trainerd.paths import Layout
from trainerd.queue import Queue
from trainerd.web.reads import Reader
from trainerd.web.server import start_server


def finish(q: Queue, job_id: str) -> None:
    ref = q.find(job_id)
    q.record_attempt_start(ref, None, Priority.NORMAL)
    q.record_attempt_end(ref, Outcome.FINISHED, 0, None)
    q.finish(ref)


def test_finished_jobs_are_ordered_by_finish_not_arrival(tmp_path):
    layout = Layout.at(make_base(tmp_path / "base", "unused-model"))
    ledger = Ledger(layout.state_db)
    q = Queue(layout, QueueConfig(), on_event=ledger.event)
    ids = [q.submit(write_jsonl(tmp_path / f"{n}.jsonl", chat_rows(2)), Priority.NORMAL).id
           for n in ("big", "small1", "small2")]
    for job_id in (ids[1], ids[2], ids[0]):  # the first to arrive finishes last
        finish(q, job_id)
    newest_first = [ids[0], ids[2], ids[1]]
    assert [r.id for r in history.finished(layout).refs] == newest_first
    assert [j["id"] for j in status.collect(layout)["done"]] == newest_first[::-1]  # oldest first, last = latest
    h = start_server(layout, ServerConfig(port=0), time.time)
    try:
        import urllib.request

        got = json.loads(urllib.request.urlopen(h.url + "api/jobs?state=done&limit=2", timeout=10).read())
        assert [j["id"] for j in got["jobs"]] == newest_first[:2] and got["total"] == 3
        page2 = json.loads(urllib.request.urlopen(h.url + "api/jobs?state=done&limit=2&offset=2", timeout=10).read())
        assert [j["id"] for j in page2["jobs"]] == newest_first[2:]
    finally:
        h.stop()
    # gc keeps the data of the job that finished last, though it arrived first.
    plan = gc(layout, RetentionConfig(keep_done_data=1), dry_run=True)
    assert {Path(i.path).name for i in plan.delete if i.what == "job data"} == {ids[1], ids[2]}
    # A requeued job leaves the order; removed jobs' old events are skipped.
    q.requeue(ids[0])
    q.remove(ids[2])
    assert [r.id for r in history.finished(layout).refs] == [ids[1]]
    ledger.close()


def test_without_state_db_the_order_is_by_arrival(tmp_path):
    layout = Layout.at(build(tmp_path / "b", 5, 0))
    layout.state_db.unlink()
    ids = [r.id for r in history.finished(layout).refs]
    assert ids == sorted(ids, reverse=True) and len(ids) == 5


class Opens:
    """Counts files opened by name (job.json, manifest.json, ...) in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: Counter[str] = Counter()
        real = builtins.open

        def counting(file, *a, **kw):
            if isinstance(file, (str, Path)):
                self.names[Path(file).name] += 1
            return real(file, *a, **kw)

        monkeypatch.setattr(builtins, "open", counting)
        monkeypatch.setattr(io, "open", counting)

    def during(self, fn) -> Counter[str]:
        self.names.clear()
        fn()
        return Counter(self.names)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> tuple[Layout, Layout]:
    root = tmp_path_factory.mktemp("history")
    # Every 7th job finishes a day late (build()): finish order differs from arrival.
    return Layout.at(build(root / "small", 1, 1)), Layout.at(build(root / "large", 700, 80))


def reads(opens: Opens, layout: Layout) -> dict[str, Counter[str]]:
    app = Reader(layout, ServerConfig(port=0), time.time)
    return {
        "status": opens.during(lambda: status.collect(layout)),
        "api/status": opens.during(app.status),
        "api/jobs": opens.during(lambda: app.jobs("done", 25)),
        "api/jobs all": opens.during(lambda: app.jobs()),
        "api/models": opens.during(lambda: app.models(20)),
        "models list": opens.during(lambda: list_versions(layout, 20)),
    }


def test_reads_do_not_grow_with_history(bases, monkeypatch):
    opens = Opens(monkeypatch)
    counts = [reads(opens, layout) for layout in bases]
    small, large = counts
    for what in small:
        for name in ("job.json", "manifest.json"):
            # The large base dir shows full pages (25 jobs, 20 versions) where the small one
            # has 1: bounded by the page, not by the 700 jobs and 80 versions.
            page = {"job.json": 50, "manifest.json": 21}[name]
            assert large[what][name] <= page, (what, name, large[what][name])
    assert large["status"]["job.json"] <= 20  # the 10 newest done + failed, nothing else


def test_the_latest_finished_is_the_one_that_finished_last(bases):
    large = bases[1]
    done = status.collect(large)["done"]
    finished_at = [json.loads((large.done / j["id"] / "job.json").read_text())["attempts"][-1]["ended_at"]
                   for j in done]
    assert finished_at == sorted(finished_at)
    assert done[-1]["name"] == "file693.jsonl"  # arrived at 693 min, a day late: the last to finish


def test_versions_past_v9999_sort_by_number(tmp_path):
    layout = Layout.at(make_base(tmp_path / "base", "unused-model"))
    for n in ("v0002", "v9999", "v10000", "v10001", "vbad"):
        (layout.models / n).mkdir(parents=True)
    assert versions(layout) == ["v0002", "v9999", "v10000", "v10001"]
    assert is_version("v10000") and not is_version("v12")


def test_models_list_pages_and_keeps_the_current(bases):
    large = bases[1]
    p = cli("models", "list", "--base-dir", large.base, "--limit", "5")
    assert "75 older version(s) not shown" in p.stdout
    shown = json.loads(cli("models", "list", "--base-dir", large.base, "--limit", "5", "--json").stdout)
    assert [v["name"] for v in shown] == ["v0076", "v0077", "v0078", "v0079", "v0080"]
    assert len(list_versions(large)) == 80


def test_a_rolled_back_current_is_listed_however_old(tmp_path):
    layout = Layout.at(build(tmp_path / "b", 0, 10))
    rollback(layout, "v0002")
    assert [v.name for v in list_versions(layout, 3)] == ["v0002", "v0008", "v0009", "v0010"]


def test_dircache_sees_every_change_and_lists_only_then(tmp_path, monkeypatch):
    from trainerd import dircache

    d = tmp_path / "done"
    d.mkdir()
    (d / "a").mkdir()
    (d / ".hidden").mkdir()
    assert dircache.entries(d) == {"a"}
    listed = []
    real = dircache.os.listdir
    monkeypatch.setattr(dircache.os, "listdir", lambda p: listed.append(p) or real(p))
    assert dircache.entries(d) == {"a"} and listed == []  # unchanged: a stat, no listing
    (tmp_path / "b").mkdir()
    os.rename(tmp_path / "b", d / "b")  # a job arriving in done/
    assert dircache.entries(d) == {"a", "b"} and len(listed) == 1
    os.rename(d / "a", tmp_path / "a")  # a requeue taking one out
    assert dircache.entries(d) == {"b"}
