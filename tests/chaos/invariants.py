"""The invariants every chaos campaign checks, read from the base dir alone.

`check(base, expected)` is the one checker: it is called after every kill (with the
world frozen or dead, so nothing moves while it reads) and at the end of every campaign
run. It returns a list of violations, each a sentence naming the file or version; an
empty list means the base dir is consistent:

- accounting: every delivered file is in exactly one place (inbox, staging, queued,
  active, done, failed), identified by the sha256 of its bytes, which are unchanged;
  a failed job has an error.json with a reason; no job dir holds something we never sent;
- checkpoints: every visible checkpoints/step-* of an unfinished job verifies its
  manifest (complete or invisible, DESIGN.md principle 4);
- the model line (current -> parent -> ... -> base): every version verifies, none is one the
  eval gate holds (unless an override made it current), and no job
  appears in two versions of the line (each example trained once, at job granularity).

It never imports torch; `same_weights` (the allclose check) does, lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainerd import atomic
from trainerd.jobs import DATA, ERROR_JSON, JOB_JSON
from trainerd.paths import PRIORITIES, Layout

RTOL, ATOL = 1e-5, 1e-7  # as tests/test_supervisor.py


@dataclass
class Expected:
    """What the campaign delivered: file name -> sha256 of its bytes (names are unique
    within a campaign; contents need not be), and what may legitimately end in failed/."""

    files: dict[str, str] = field(default_factory=dict)
    must_fail: set[str] = field(default_factory=set)  # bad files: rejected, nowhere else
    may_fail: set[str] = field(default_factory=set)  # in failed/ is fine too (bad, or skipped)
    removed: set[str] = field(default_factory=set)  # names the user removed on purpose
    optional: set[str] = field(default_factory=set)  # not yet acknowledged `queue add`: may be nowhere
    acked: set[str] = field(default_factory=set)  # said "queued": never back in the inbox or staging

    def add(self, name: str, data: bytes, bad: bool = False) -> None:
        if name in self.files:
            raise ValueError(f"{name} delivered twice; campaigns give every file its own name")
        self.files[name] = hashlib.sha256(data).hexdigest()
        if bad:
            self.must_fail.add(name)
            self.may_fail.add(name)


@dataclass
class Place:
    where: str  # inbox, staging, queued/<prio>, active, done, failed
    path: Path
    name: str | None  # the original file name, when it can be told
    sha: str | None  # sha256 of the bytes found there (None: not a readable data file)


def _sha(path: Path) -> str | None:
    try:
        return atomic.sha256_file(path)
    except OSError:
        return None


def _job_place(where: str, job: Path, by_sha: dict[str, list[str]]) -> Place:
    data = job / DATA
    sha = _sha(data) if data.is_file() and not data.is_symlink() else None
    try:
        name = atomic.read_json(job / JOB_JSON).get("original_name")
    except (OSError, ValueError):  # not written yet (mid-intake) or lost in a crash
        guesses = by_sha.get(sha or "", [])
        name = guesses[0] if len(guesses) == 1 else None
    return Place(where, job, name, sha)


def places(layout: Layout, exp: Expected | None = None) -> list[Place]:
    """Every delivered-looking file and every job dir, with what it is."""
    by_sha: dict[str, list[str]] = {}
    for n, s in (exp.files.items() if exp else ()):
        by_sha.setdefault(s, []).append(n)
    found: list[Place] = []
    if layout.inbox.is_dir():
        for p in sorted(layout.inbox.rglob("*")):
            if p.is_file() and not p.is_symlink() and not p.name.startswith(".") \
                    and not p.name.endswith((".part", ".tmp", ".rejected.json")):
                found.append(Place("inbox", p, p.name, _sha(p)))
    folders = [("staging", layout.incoming)] + [(f"queued/{p}", layout.queued(p)) for p in PRIORITIES]
    folders += [("active", layout.active), ("done", layout.done), ("failed", layout.failed)]
    for where, d in folders:
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        found += [_job_place(where, d / n, by_sha) for n in names if not n.startswith(".")]
    return found


def check_accounting(layout: Layout, exp: Expected, final: bool = False) -> list[str]:
    out: list[str] = []
    seen: dict[str, list[Place]] = {}
    for place in places(layout, exp):
        if place.name is None or place.name not in exp.files:
            # A staging folder is empty for an instant (the lock placeholder of a CLI edit),
            # or holds only a not-yet-delivered copy of an unanswered `queue add` or an
            # intake's temp job.json, which recovery removes (the user's file is untouched).
            if place.where == "staging" and all(
                    n.startswith(".") and (n.endswith((".part", ".tmp")) or n.startswith(atomic.TMP_PREFIX))
                    for n in os.listdir(place.path)):
                continue
            out.append(f"unexpected {place.where} entry {place.path.name} (not a file we delivered)")
            continue
        seen.setdefault(place.name, []).append(place)
        if place.sha is not None and place.sha != exp.files[place.name]:
            out.append(f"{place.where}/{place.path.name}: bytes differ from the delivered {place.name}")
        if place.where == "failed":
            out += _has_reason(place)
            if place.name not in exp.may_fail:
                out.append(f"{place.name} is in failed/ ({_reason(place.path)[:200]}) but is a good file")
    for name in exp.files:
        got = seen.get(name, [])
        if name in exp.removed:
            if got:
                out.append(f"{name} was removed by the user but is still in {[p.where for p in got]}")
            continue
        if not got:
            if name not in exp.optional:
                out.append(f"{name} is lost: in no folder at all")
        elif name in exp.acked and got[0].where in ("inbox", "staging"):
            out.append(f"{name} was acknowledged as queued but is back in {got[0].where}")
        elif len(got) > 1:
            out.append(f"{name} is duplicated: in {[f'{p.where}/{p.path.name}' for p in got]}")
        elif final and got[0].where in ("inbox", "staging"):
            out.append(f"{name} was never taken in: still in {got[0].where}")
        elif final and name in exp.must_fail and got[0].where != "failed":
            out.append(f"{name} is a bad file but ended in {got[0].where}")
    return out


def where_is(layout: Layout, exp: Expected) -> dict[str, list[Place]]:
    """name -> its places (for campaign-specific checks)."""
    out: dict[str, list[Place]] = {}
    for p in places(layout, exp):
        if p.name is not None:
            out.setdefault(p.name, []).append(p)
    return out


def _reason(job: Path) -> str:
    try:
        return str(atomic.read_json(job / ERROR_JSON).get("reason") or "")
    except (OSError, ValueError):
        return ""


def _has_reason(place: Place) -> list[str]:
    if not _reason(place.path).strip():
        return [f"failed/{place.path.name} has no error.json with a reason"]
    return []


def check_checkpoints(layout: Layout) -> list[str]:
    """A visible step-* checkpoint of an unfinished job must verify (DESIGN.md principle 4:
    complete or invisible). Writes are committed by rename after the manifest; deletions
    rename first too (worker/checkpoints.py, since the kill campaign found rmtree in place)."""
    out = []
    for d in (layout.active, *(layout.queued(p) for p in PRIORITIES)):
        for ck in sorted(d.glob("*/checkpoints/step-*")):
            try:
                atomic.verify_manifest(ck)
            except atomic.ManifestError as e:
                out.append(f"visible incomplete checkpoint {ck.parent.parent.name}/{ck.name}: {e}")
    return out


def model_line(layout: Layout) -> list[tuple[str, dict[str, Any]]]:
    """(version, manifest) from current back to the base, newest first. Raises ValueError
    when a link of the chain is missing or loops."""
    out: list[tuple[str, dict[str, Any]]] = []
    if not os.path.lexists(layout.current_model):
        return out
    name: str | None = os.readlink(layout.current_model)
    while name and name != "base":
        if name in (n for n, _ in out):
            raise ValueError(f"the model line loops at {name}")
        path = layout.models / name
        if not path.is_dir():
            raise ValueError(f"version {name} in the line is missing")
        out.append((name, atomic.verify_manifest(path, check_hashes=False)))
        name = out[-1][1].get("parent")
    return out


def check_line(layout: Layout) -> list[str]:
    out: list[str] = []
    try:
        line = model_line(layout)
    except (ValueError, atomic.ManifestError) as e:
        return [f"model line broken: {e}"]
    for name, _man in line:
        try:
            atomic.verify_manifest(layout.models / name)  # every sha256 this time
        except atomic.ManifestError as e:
            out.append(f"version {name} in the line does not verify: {e}")
    counts: dict[str, list[str]] = {}
    for name, man in line:
        for j in man.get("jobs", []):
            counts.setdefault(j.get("id"), []).append(name)
    out += [f"job {job} is trained twice into the line: in {vs}" for job, vs in counts.items() if len(vs) > 1]
    # A version the eval gate held stays outside the line unless someone made it current.
    from trainerd import gate

    made_current = gate.overrides(layout)
    out += [f"version {name} is in the line but the eval gate holds it (no override recorded)"
            for name, man in line if gate.is_held(man) and name not in made_current]
    return out


def line_jobs(layout: Layout) -> list[str]:
    """Job ids of the line, oldest first."""
    return [j["id"] for _n, man in reversed(model_line(layout)) for j in man.get("jobs", [])]


def check(base: Path, exp: Expected, final: bool = False) -> list[str]:
    """All invariants; `final` adds those that hold only once the daemon is idle."""
    layout = Layout.at(base)
    out = check_accounting(layout, exp, final) + check_checkpoints(layout) + check_line(layout)
    if final:
        out += check_final(layout)
    return out


def check_final(layout: Layout) -> list[str]:
    """Idle: every done job is in the line exactly once, and every line job is done."""
    out: list[str] = []
    try:
        in_line = line_jobs(layout)
    except (ValueError, atomic.ManifestError):
        return []  # already reported by check_line
    done = set(os.listdir(layout.done)) if layout.done.is_dir() else set()
    out += [f"done job {j} is not in the model line" for j in sorted(done - set(in_line))]
    out += [f"line job {j} is not in done/" for j in in_line if j not in done]
    if os.listdir(layout.active):
        out.append(f"jobs left in active/: {os.listdir(layout.active)}")
    return out


def current_adapter(base: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(Layout.at(base).current_model / "adapter_model.safetensors"))


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """allclose at rtol 1e-5 (test_supervisor's tolerance), tensor by tensor."""
    import torch

    if a.keys() != b.keys():
        return [f"adapter tensors differ: {sorted(set(a) ^ set(b))[:5]}"]
    out = []
    for k in sorted(a):
        if not torch.allclose(a[k], b[k], rtol=RTOL, atol=ATOL):
            out.append(f"{k}: max abs diff {float((a[k] - b[k]).abs().max()):.3g} vs the uninterrupted run")
    return out[:5]


def dump(base: Path) -> str:
    """A short picture of the base dir for a failure message."""
    layout = Layout.at(base)
    lines = [f"{p.where}: {p.path.name} ({p.name})" for p in places(layout)]
    try:
        lines.append("line: " + " -> ".join(n for n, _ in model_line(layout)))
    except Exception as e:
        lines.append(f"line: {e}")
    return "\n".join(lines)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []
