"""`python -m trainerd.worker.consolidate --base-dir BASE`: merge the line's adapter into
a new full version, verify it, and only then make it current.

The supervisor decides when (trainerd.schedule: only when nothing is queued or active, and
it asks this process to stop, SIGTERM, when work arrives or the daemon pauses); this
process never looks at the queue. It does the work and reports through its exit status
(trainerd.jobs.ExitCode): FINISHED (merged and current, or nothing to merge), STOPPED
(asked to stop: try again later), DATA_ERROR (the merge failed verification or
the adapter is damaged: set aside, not retried), NONFINITE (the merged weights hold
NaN/Inf), RESOURCE_ERROR (out of memory); anything else is a crash. run/consolidation.json
says what happened, for people and for `trainerd status`.

Verification, before `current` moves: the merged model loads from disk on its own, no
weight is NaN/Inf, its loss on a probe set (`[eval] probe_file`, else a fixed sample of done
jobs' examples) matches the adapter model's within loss_rtol, and its logits for a fixed
input are allclose to the adapter model's. A merge that fails stays in
models/rejected-vNNNN-of-vMMMM-<time>/ with the reason in its manifest.

`--export NAME DEST` instead writes adapter version NAME merged into its base to DEST,
verified the same way, and prints the result as JSON (trainerd.line.export asks for it).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainerd import __version__, atomic, children
from trainerd.config import Config, ConsolidateConfig, DataMapConfig, load_config
from trainerd.jobs import ExitCode
from trainerd.line.errors import Busy, LineError
from trainerd.line.export import check_export
from trainerd.line.lock import models_lock
from trainerd.line.refs import current, set_current
from trainerd.line.replay import nonblank_lines, sample_examples
from trainerd.line.versions import REJECTED, current_name, next_name, problems, resolve_base
from trainerd.paths import Layout
from trainerd.worker import models
from trainerd.worker.main import StopFlag, _die_with_parent

log = logging.getLogger("trainerd.worker.consolidate")

RESULT_JSON = "consolidation.json"  # in run/
PROBE_JSONL = "probe.jsonl"  # in BASE/: the user's own held-out examples, if any
PROBE_SEED = 20240601  # a fixed sample, so successive consolidations probe comparably
FIXED_TEXT = "trainerd consolidation check: the quick brown fox jumps over the lazy dog. 0123456789"


class Stopped(Exception):
    """A stop was requested between two phases; nothing was made current."""


@dataclass
class Checks:
    ok: bool = True
    nonfinite: bool = False
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str, nonfinite: bool = False) -> None:
        self.ok = False
        self.nonfinite = self.nonfinite or nonfinite
        self.reasons.append(reason)


# ------------------------------------------------------------------ measuring a model
def probe_rows(layout: Layout, n: int, probe_file: str = PROBE_JSONL,
               data_map: DataMapConfig | None = None) -> tuple[list[dict[str, Any]], str]:
    """Up to n held examples, in a standard format: the probe set (`[eval] probe_file`,
    relative to the base dir) if present, else a seeded sample of the done jobs' data (the
    same sample every time while done/ is unchanged). `[data.map]` formats count too."""
    from trainerd.formats import NO_MAP, FormatError, parse, to_json

    path = layout.base / probe_file  # an absolute probe_file stays as it is
    if path.is_file():
        rows = []
        for _n, raw in nonblank_lines(path):
            try:
                rows.append(to_json(parse(json.loads(raw), data_map or NO_MAP)))
            except (ValueError, FormatError):
                continue
            if len(rows) >= n:
                break
        return rows, str(path)
    raw, _sources, _total = sample_examples(layout, n, PROBE_SEED, data_map=data_map or NO_MAP)
    return [json.loads(r) for r in raw], "done jobs' data"


def _encode(rows: list[dict[str, Any]], tokenizer: Any, max_len: int) -> list[tuple[list[int], list[int]]]:
    from trainerd.worker.data import tokenize_example

    out = []
    for obj in rows:
        try:
            seqs = tokenize_example(obj, tokenizer)
        except Exception as e:  # a probe example the template cannot render is just skipped
            log.warning("probe example skipped: %s", e)
            continue
        for ids, mask in seqs:
            ids, mask = ids[:max_len], mask[:max_len]
            if sum(mask[1:]):
                out.append((ids, mask))
    fixed = tokenizer(FIXED_TEXT, add_special_tokens=False)["input_ids"]
    return out or [(fixed, [1] * len(fixed))]  # no data at all: the fixed text is the probe


def _measure(model: Any, probe: list[tuple[list[int], list[int]]], fixed: list[int]) -> tuple[float, Any]:
    """(token-weighted loss on the probe's trainable tokens, float32 logits of `fixed`)."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in probe:
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
            target = torch.tensor(ids[1:], device=device)
            keep = torch.tensor(mask[1:], device=device).bool()
            total += float(F.cross_entropy(logits[keep], target[keep], reduction="sum"))
            count += int(keep.sum())
        out = model(input_ids=torch.tensor([fixed], device=device)).logits.float().cpu()
    return total / max(count, 1), out


def _tolerance(dtype: Any, ccfg: ConsolidateConfig) -> float:
    import torch

    if ccfg.logits_atol:
        return ccfg.logits_atol
    # fp32 merge differs from base + adapter only by summation order; a 16-bit merged
    # weight is also rounded, so logits move by a few hundredths.
    return 1e-3 if dtype == torch.float32 else 0.25


def merge_and_verify(adapter_dir: Path, base: str, out: Path, cfg: Config, ccfg: ConsolidateConfig,
                     probe: list[dict[str, Any]], stop: StopFlag | None = None) -> Checks:
    """Write base + adapter merged (weights + tokenizer) to `out`, then verify the copy on
    disk against the adapter model. The caller decides what `out` becomes."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def check_stop() -> None:
        if stop:
            raise Stopped(stop.reason or "stop requested")

    dtype = models.torch_dtype(cfg.train)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    encoded = _encode(probe, tokenizer, cfg.train.max_seq_len)
    fixed = tokenizer(FIXED_TEXT, add_special_tokens=False)["input_ids"]

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), str(adapter_dir))
    model.to(device).eval()
    ref_loss, ref_logits = _measure(model, encoded, fixed)
    check_stop()
    merged = model.merge_and_unload()
    merged.config.use_cache = True
    shutil.rmtree(out, ignore_errors=True)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model, merged
    gc.collect()
    check_stop()

    checks = Checks(details={"probe_examples": len(encoded), "adapter_loss": ref_loss, "dtype": str(dtype)})
    if not math.isfinite(ref_loss):
        checks.fail(f"the adapter model's own probe loss is {ref_loss}", nonfinite=True)
    try:  # the merged model must stand on its own: load it from disk, as a user would
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).to(device).eval()
    except Exception as e:
        checks.fail(f"the merged model does not load from disk: {type(e).__name__}: {e}")
        return checks
    bad = [n for n, p in reloaded.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        checks.fail(f"non-finite values in {', '.join(bad[:5])}", nonfinite=True)
        return checks
    loss, logits = _measure(reloaded, encoded, fixed)
    tol = _tolerance(dtype, ccfg)
    diff = float((logits - ref_logits).abs().max())
    checks.details.update(merged_loss=loss, max_logit_diff=diff, logits_atol=tol, loss_rtol=ccfg.loss_rtol)
    if not math.isfinite(loss) or abs(loss - ref_loss) > ccfg.loss_rtol * max(abs(ref_loss), 1e-6):
        checks.fail(f"probe loss {loss:.6g} differs from the adapter model's {ref_loss:.6g} by more than "
                    f"loss_rtol = {ccfg.loss_rtol:g}", nonfinite=not math.isfinite(loss))
    if not torch.allclose(logits, ref_logits, atol=tol, rtol=tol):
        checks.fail(f"logits for a fixed input differ by up to {diff:.3g} (tolerance {tol:g})")
    return checks


# ------------------------------------------------------------------ consolidation
def _result(layout: Layout, **info: Any) -> None:
    atomic.write_json(layout.run / RESULT_JSON, {"at": time.time(), **info})


def consolidate(layout: Layout, stop: StopFlag | None = None) -> ExitCode:
    cfg = load_config(layout.config)
    ccfg = cfg.consolidate
    with models_lock(layout, "consolidation", timeout=60):
        if stop:  # work arrived, or a pause, while it started (fix #8: never merge under a job)
            log.info("not consolidating: %s", stop.reason or "asked to stop")
            _result(layout, status="deferred", reason=stop.reason or "asked to stop")
            return ExitCode.STOPPED
        ref = current(layout, cfg)
        if ref.kind != "adapter" or ref.path is None:
            log.info("nothing to consolidate: current is %s (%s)", ref.version, ref.kind)
            _result(layout, status="nothing", version=ref.version, reason=f"current is {ref.kind}")
            return ExitCode.FINISHED
        found = problems(layout, ref.version)
        if found:
            log.error("not consolidating %s: %s", ref.version, "; ".join(found))
            _result(layout, status="refused", source=ref.version, reason="; ".join(found))
            return ExitCode.DATA_ERROR

        name = next_name(layout)
        tmp = layout.models / f"{atomic.TMP_PREFIX}consolidate-{name}"
        base = resolve_base(layout, ref.manifest) or ref.base
        probe, probe_from = probe_rows(layout, ccfg.probe_examples, cfg.eval.probe_file, cfg.data.map)
        log.info("merging %s into %s (%d probe examples from %s)", ref.version, base, len(probe), probe_from)
        t0 = time.monotonic()
        try:
            checks = merge_and_verify(ref.path, base, tmp, cfg, ccfg, probe, stop)
        except Stopped as e:
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("consolidation stopped (%s); nothing changed", e)
            _result(layout, status="stopped", source=ref.version, reason=str(e))
            return ExitCode.STOPPED
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        meta = {
            "version": name, "parent": ref.version, "kind": "full", "base": None,
            # The merged weights hold these jobs: a worker that died after publishing one of
            # them still recognises it as published (line.refs.published_version).
            "jobs": ref.manifest.get("jobs", []),
            "created_at": time.time(), "trainerd_version": __version__,
            "consolidated": {"from": ref.version, "base": base, "probe": probe_from,
                             "seconds": round(time.monotonic() - t0, 1), **checks.details},
        }
        if not checks.ok:
            reason = "; ".join(checks.reasons)
            atomic.write_manifest(tmp, {**meta, "version": None, "rejected": reason})
            aside = layout.models / f"{REJECTED}{name}-of-{ref.version}-{time.strftime('%Y%m%dT%H%M%S')}"
            atomic.rename(tmp, aside)
            log.error("consolidation of %s rejected (%s); kept aside as %s; current is still %s",
                      ref.version, reason, aside.name, ref.version)
            _result(layout, status="rejected", source=ref.version, path=str(aside), reason=reason,
                    checks=checks.details)
            return ExitCode.NONFINITE if checks.nonfinite else ExitCode.DATA_ERROR
        atomic.make_readable(tmp)  # served as it is: readable whatever the umask
        atomic.write_manifest(tmp, meta)
        atomic.rename(tmp, layout.models / name)
        if current_name(layout) != ref.version or stop:
            # Someone trained on meanwhile (a manual run beside the daemon), or work is
            # waiting: the merged version stays as a sound version, but not current.
            why = (stop.reason or "asked to stop") if stop else f"current moved to {current_name(layout)}"
            log.warning("%s verified but not made current: %s", name, why)
            _result(layout, status="not current", version=name, source=ref.version, reason=why)
            return ExitCode.STOPPED
        set_current(layout, name)
    log.info("consolidated %s into full version %s (probe loss %.4f -> %.4f, max logit diff %.2g)",
             ref.version, name, checks.details["adapter_loss"], checks.details["merged_loss"],
             checks.details["max_logit_diff"])
    _result(layout, status="ok", version=name, source=ref.version, checks=checks.details)
    return ExitCode.FINISHED


def export_merged(layout: Layout, name: str, dest: Path) -> dict[str, Any]:
    """Adapter version `name` merged into its base, written to `dest` (a plain HF model
    folder with a manifest), verified like a consolidation."""
    cfg = load_config(layout.config)
    ccfg = cfg.consolidate
    name, man, dest = check_export(layout, name, dest)
    if man.get("kind") != "adapter":
        raise LineError(f"{name} is a full version: nothing to merge; export it without --merged")
    base = resolve_base(layout, man)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{atomic.TMP_PREFIX}export-{dest.name}-{os.getpid()}"
    try:
        checks = merge_and_verify(layout.models / name, str(base), tmp, cfg, ccfg,
                                  probe_rows(layout, ccfg.probe_examples, cfg.eval.probe_file, cfg.data.map)[0])
        if not checks.ok:
            raise LineError(f"merged export of {name} failed verification: "
                                           f"{'; '.join(checks.reasons)}")
        atomic.make_readable(tmp)
        atomic.write_manifest(tmp, {"exported_from": name, "kind": "full", "merged_from": name,
                                    "base": base, "jobs": man.get("jobs", []), "exported_at": time.time(),
                                    "checks": checks.details})
        if dest.exists():
            dest.rmdir()
        atomic.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(dest), "version": name, "kind": "full", "merged": True, "checks": checks.details}


def main(argv: list[str] | None = None) -> int:
    stop = StopFlag()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set(signal.Signals(signum).name)  # a flag; checked between phases

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _die_with_parent()  # never merge on beside a restarted daemon
    ap = argparse.ArgumentParser(prog="python -m trainerd.worker.consolidate")
    ap.add_argument("--base-dir", type=Path, required=True)
    ap.add_argument("--export", nargs=2, metavar=("VERSION", "DEST"), default=None,
                    help="write adapter VERSION merged into its base to DEST (a new folder) instead")
    args = ap.parse_args(argv)
    # An export's stderr is a person's terminal: warnings only, as when it ran in the CLI.
    logging.basicConfig(level=logging.WARNING if args.export else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    layout = Layout.at(args.base_dir)
    if args.export:  # `trainerd models export --merged` (trainerd.line.export), in children's format
        channel = children.Channel()
        try:
            channel.result(export_merged(layout, args.export[0], Path(args.export[1])))
        except LineError as e:
            channel.error(str(e))  # the CLI says it: `error: <sentence>`
            return int(ExitCode.DATA_ERROR)
        return int(ExitCode.FINISHED)
    try:
        return int(consolidate(layout, stop))
    except Busy as e:
        log.warning("%s", e)
        return int(ExitCode.STOPPED)
    except Exception as e:
        from trainerd.worker.main import _is_oom

        log.exception("consolidation failed")
        _result(layout, status="crashed", reason=f"{type(e).__name__}: {e}")
        return int(ExitCode.RESOURCE_ERROR if _is_oom(e) else 1)


if __name__ == "__main__":
    raise SystemExit(main())
