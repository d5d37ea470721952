"""Fuzzed inputs: generated bad files (hypothesis strategies) dropped into a running daemon
together with good ones. Every bad one must land in failed/ with a reason (and, where a
line is at fault, that line's number); every good one must train; the daemon must stay up
and keep its heartbeat throughout.

Each bad file knows the line the validator must blame (`Bad.line`, 1-based; None where the
file as a whole is at fault: empty, blank-only, a lone BOM).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st

from tests.chaos import invariants
from tests.chaos.harness import (
    Log,
    Tally,
    deliver,
    kill_tree,
    log_tail,
    quiet,
    rng_for,
    start_daemon,
    stop_daemon,
    wait_for,
)
from tests.conftest import chat_rows, make_base
from trainerd import atomic
from trainerd.paths import Layout

GOOD_LINE = json.dumps({"text": "fine"}) + "\n"
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Bad:
    kind: str
    data: bytes
    line: int | None


def _around(bad_line: bytes, before: int, after: int, kind: str) -> Bad:
    """Good lines around one bad line: the blamed number must be the bad line's."""
    body = GOOD_LINE.encode() * before + bad_line.rstrip(b"\n") + b"\n" + GOOD_LINE.encode() * after
    return Bad(kind, body, before + 1)


pad = st.integers(0, 3)
texts = st.text(max_size=20)
WRONG = st.one_of(
    st.sampled_from([[], [1, 2], "a string", 3, None, True]),
    st.builds(lambda t: {"messages": t}, st.one_of(texts, st.integers(), st.just([]))),
    st.builds(lambda r, c: {"messages": [{"role": r, "content": c}]},
              texts.filter(lambda r: r not in ("system", "user", "assistant")), texts),
    st.builds(lambda c: {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": c}]},
              st.one_of(st.integers(), st.none(), st.just("   "), st.lists(st.integers(), max_size=2))),
    st.builds(lambda p: {"prompt": p}, texts),
    st.builds(lambda v: {"text": v}, st.one_of(st.integers(), st.none(), st.just(""), st.just([]))),
    st.builds(lambda k: {k: "x"}, texts.filter(lambda k: k not in ("messages", "prompt", "completion", "text"))),
)


def _truncated(obj: dict, cut: float) -> bytes:
    s = json.dumps(obj).encode()
    return s[: max(1, int(len(s) * cut))]  # a proper prefix of an object is never valid JSON


def strategies() -> dict[str, st.SearchStrategy[Bad]]:
    """One strategy per kind of bad file the issue lists."""
    utf8 = st.builds(lambda b, p, q: _around(b'{"text": "' + b + b'"}', p, q, "bad-utf8"),
                     st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]),
                     pad, pad)
    trunc = st.builds(lambda o, c, p, q: _around(_truncated(o, c), p, q, "truncated-json"),
                      st.sampled_from(chat_rows(3)), st.floats(0.05, 0.95), pad, pad)
    wrong = st.builds(lambda o, p, q: _around(json.dumps(o).encode(), p, q, "wrong-type"), WRONG, pad, pad)
    huge = st.builds(lambda n, c, p: _around(bytes([c]) * n, p, 0, "huge-line"),
                     st.integers(100_000, 1_500_000), st.sampled_from(b"x{[\x01"), pad)
    empty = st.builds(lambda n, crlf: Bad("empty", (b"\r\n" if crlf else b"  \n") * n, None),
                      st.integers(1, 50), st.booleans())
    bom = st.one_of(st.builds(lambda n: Bad("bom", BOM + b"\n" * n, None), st.integers(0, 5)),
                    st.builds(lambda p: _around(BOM + GOOD_LINE.encode(), p + 1, 0, "bom"), pad),
                    st.builds(lambda g: Bad("bom", BOM + g + b"\n", 1),
                              st.binary(min_size=1, max_size=50).map(lambda b: b"\x00" + b.replace(b"\n", b""))))
    nested = st.builds(lambda d, p, q: _around(b"[" * d + b"]" * d, p, q, "nested-garbage"),
                       st.integers(1, 200_000), pad, pad) | st.builds(
        lambda v: _around(json.dumps({"messages": [{"role": "user", "content": {"a": [[[v]]]}}]}).encode(), 0, 0,
                          "nested-garbage"), st.integers())
    binary = st.builds(lambda b: Bad("binary", b"\x00" + b, 1), st.binary(min_size=0, max_size=4000))
    return {"bad-utf8": utf8, "truncated-json": trunc, "wrong-type": wrong, "huge-line": huge, "empty": empty,
            "zero-byte": st.just(Bad("zero-byte", b"", None)), "bom": bom, "nested-garbage": nested,
            "binary": binary}


def _collect(strategy: st.SearchStrategy[Bad], n: int, seed: int) -> list[Bad]:
    out: list[Bad] = []

    @hyp_seed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(b: Bad) -> None:
        if len(out) < n:
            out.append(b)

    collect()
    while out and len(out) < n:  # a small space (zero-byte) runs out: repeat it
        out += out[: n - len(out)]
    return out


def generate(n: int, seed: int) -> list[Bad]:
    """`n` bad files, the kinds in equal shares, reproducibly (hypothesis' own seed)."""
    kinds = strategies()
    per = -(-n // len(kinds))
    pools = [_collect(strat, per, seed + i) for i, strat in enumerate(kinds.values())]
    mixed = [pool[j] for j in range(per) for pool in pools]
    return mixed[:n]


def check_rejection(layout: Layout, place: invariants.Place, bad: Bad) -> list[str]:
    """failed/ with a reason; the blamed line when the file has one at fault."""
    try:
        err = atomic.read_json(place.path / "error.json")
    except (OSError, ValueError):
        return [f"{place.name}: no readable error.json"]
    reason = str(err.get("reason") or "")
    if not reason:
        return [f"{place.name}: rejected without a reason"]
    if bad.line is None:
        return [] if "no examples" in reason else [f"{place.name} ({bad.kind}): reason {reason[:120]!r}"]
    if bad.data.removeprefix(BOM).lstrip().startswith(b"["):  # a .jsonl that opens like an array
        return [] if "JSON array" in reason else [f"{place.name} ({bad.kind}): not named a JSON array: "
                                                  f"{reason[:120]!r}"]
    lines = [e.get("line") for e in err.get("errors", [])]
    if bad.line not in lines or f"line {bad.line}:" not in reason:
        return [f"{place.name} ({bad.kind}): expected line {bad.line} blamed, got {lines} / {reason[:160]!r}"]
    return []


def campaign(model: Path, root: Path, *, n_bad: int, n_good: int, seed: int | None = None,
             log: Log = quiet, batch: int = 50, timeout: float = 600) -> Tally:
    rng, seed = rng_for(seed, log)
    tally = Tally()
    tally.counts["seed"] = seed
    bads = generate(n_bad, seed)
    goods = [(f"good-{i:03d}.jsonl", "".join(json.dumps(r) + "\n" for r in chat_rows(4, f"g{i}")).encode())
             for i in range(n_good)]
    drops: list[tuple[str, bytes, Bad | None]] = [(f"bad-{i:04d}-{b.kind}.jsonl", b.data, b) for i, b in enumerate(bads)]
    drops += [(name, data, None) for name, data in goods]
    rng.shuffle(drops)
    base = make_base(root / "base", model, "[schedule]\nsnapshot_at = \"off\"\n")
    layout = Layout.at(base)
    exp = invariants.Expected()
    d = start_daemon(base)
    try:
        wait_for(lambda: layout.status.exists(), timeout=60, what="daemon up")
        for i in range(0, len(drops), batch):
            for name, data, bad in drops[i:i + batch]:
                deliver(base, name, data, exp, bad=bad is not None)
                tally.bump(f"kind:{bad.kind if bad else 'good'}")
            time.sleep(rng.uniform(0, 0.5))
            _alive(d, layout, tally, f"after {i + batch} drops")
        wait_for(lambda: len(list(layout.done.iterdir())) >= n_good and not any(layout.inbox.iterdir()),
                 timeout=timeout, what=f"every good file trained\n{log_tail(base)}")
        _alive(d, layout, tally, "at the end")
        rc = stop_daemon(d, base)
        if rc != 0:
            tally.fail("stop", [f"daemon exit {rc}"])
    finally:
        kill_tree(d)
    tally.fail("invariants", invariants.check(base, exp, final=True))
    by_name = {name: bad for name, _d, bad in drops}
    for name, ps in invariants.where_is(layout, exp).items():
        bad = by_name[name]
        if bad is not None and len(ps) == 1 and ps[0].where == "failed":
            problems = check_rejection(layout, ps[0], bad)
            tally.fail("rejection", problems)
            tally.bump("rejected_ok" if not problems else "rejected_badly")
        elif bad is None and len(ps) == 1 and ps[0].where == "done":
            tally.bump("good_trained")
    tally.counts["bad_files"], tally.counts["good_files"] = len(bads), n_good
    log(f"fuzz: {tally.summary()}")
    return tally


def _alive(d, layout: Layout, tally: Tally, when: str) -> None:
    """Up (process alive) and responsive (heartbeat fresh) — never restarted by us."""
    if d.poll() is not None:
        tally.fail("daemon", [f"exited {d.returncode} {when}"])
        raise AssertionError(f"daemon exited {d.returncode} {when}")
    try:
        age = time.time() - atomic.read_json(layout.status)["heartbeat_at"]
    except (OSError, ValueError, KeyError):
        age = float("inf")
    tally.sample("heartbeat_age_s", age)
    tally.bump("liveness_checks")
