"""Two model versions side by side: per-example probe loss and answers to the same prompts.

The loss of each probe example is computed exactly as the probe evals do (worker.evals:
the training rendering and masks, the model's own loss); a record that trains several
sequences sums them. Totals are token-weighted means, like the eval's `loss`. An example
is "better" in B when its loss is lower than A's by more than SAME_RTOL (relative), "worse"
when higher by more; the rest did not change. Versions are loaded one after the other, so
memory holds one model at a time.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainerd.config import Config
from trainerd.formats import FileKindError, decode, iter_records
from trainerd.paths import Layout
from trainerd.worker.asker import Asker, Item, UserError, item_from, items_from_file

SAME_RTOL = 0.005  # within 0.5% of A's loss counts as unchanged


def probe_items(path: Path, cfg: Config, k: int) -> list[Item]:
    """The first k probe records that can be asked (a conversation or a prompt), with their
    expected answers: what the compare view shows side by side when no --prompts is given."""
    out: list[Item] = []
    try:
        with open(path, "rb") as f:
            for rec in iter_records(f):
                if len(out) >= k:
                    break
                if rec.raw is not None and not rec.raw.strip():
                    continue
                try:
                    item = item_from(decode(rec), cfg)
                except (UserError, ValueError):
                    continue  # load_probe names bad lines; here they are just not asked
                if item.expected is not None:
                    out.append(item)
    except (OSError, FileKindError):
        return []
    return out


def _losses(asker: Asker, path: Path, cfg: Config) -> dict[int, tuple[float, int]] | None:
    """{probe record: (summed loss, tokens)} for one loaded version; None without a probe set."""
    from trainerd.worker.evals import example_nll, load_probe

    probe = load_probe(path, asker.tok, cfg.train.max_seq_len, 0, cfg.data.map)
    if probe is None:
        return None
    out: dict[int, tuple[float, int]] = {}
    with asker.torch.no_grad():
        for line, (ids, mask) in zip(probe.lines, probe.examples, strict=True):
            nll, n = example_nll(asker.model, ids, mask, asker.device)
            s, t = out.get(line, (0.0, 0))
            out[line] = (s + nll, t + n)
    return out


def _total(losses: dict[int, tuple[float, int]], lines: list[int]) -> float | None:
    tokens = sum(losses[n][1] for n in lines)
    return sum(losses[n][0] for n in lines) / tokens if tokens else None


def compare(layout: Layout, cfg: Config, a: str, b: str, probe: Path | None, prompts: Path | None,
            max_new_tokens: int, load: Callable[[str], Asker]) -> dict[str, Any]:
    probe_path = probe or (layout.base / cfg.eval.probe_file)  # an absolute probe_file stays as it is
    items = items_from_file(prompts, cfg) if prompts else probe_items(probe_path, cfg, cfg.eval.generate_examples)
    if not items and not probe_path.is_file():
        raise UserError(f"nothing to compare on: no probe set at {probe_path} and no --prompts FILE; "
                        "give --probe FILE (training formats) or --prompts FILE (one prompt per line)")
    names: list[str] = []
    losses: list[dict[int, tuple[float, int]] | None] = []
    answers: list[list[dict[str, Any]]] = []
    for spec in (a, b):
        asker = load(spec)
        names.append(asker.ref.version)
        losses.append(_losses(asker, probe_path, cfg))
        answers.append([asker.answer(it, max_new_tokens) for it in items])
        del asker
        gc.collect()  # one model in memory at a time
    out: dict[str, Any] = {"a": names[0], "b": names[1], "probe": None, "rtol": SAME_RTOL,
                           "answers": [{"prompt": it.label, "expected": it.expected, "a": x["answer"], "b": y["answer"]}
                                       for it, x, y in zip(items, answers[0], answers[1], strict=True)]}
    la, lb = losses
    if la is not None and lb is not None:
        lines = sorted(set(la) & set(lb))
        rows = []
        for n in lines:
            ma = la[n][0] / la[n][1] if la[n][1] else None
            mb = lb[n][0] / lb[n][1] if lb[n][1] else None
            change = "same"
            if ma is not None and mb is not None and abs(mb - ma) > SAME_RTOL * max(abs(ma), 1e-9):
                change = "better" if mb < ma else "worse"
            rows.append({"line": n, "a": ma, "b": mb, "delta": None if ma is None or mb is None else mb - ma,
                         "change": change})
        out["probe"] = {
            "file": str(probe_path), "examples": len(rows), "rows": rows,
            "total": {"a": _total(la, lines), "b": _total(lb, lines)},
            "better": [r["line"] for r in rows if r["change"] == "better"],
            "worse": [r["line"] for r in rows if r["change"] == "worse"],
        }
    return out
