"""Before the daemon trains anything: is `base_model` there, and does it load?

Two levels, both torch-free in this process:
- `locate()`: a stat-only look (a local directory with config.json, or a snapshot in the
  local Hugging Face cache). Cheap enough to run before every attempt, so a model that
  disappears while the daemon runs pauses it instead of burning the next job's attempts.
- `check()`: the config and tokenizer really load and the chat template renders a user ->
  assistant conversation, in a child process (`python -m trainerd.worker.preflight`;
  the supervisor never imports transformers). A success is remembered in
  run/preflight.json against the model files' names, sizes and mtimes, so a restart of an
  unchanged model costs a few stats instead of a Python + transformers start.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainerd import atomic
from trainerd.config import Config
from trainerd.jobs import child_env
from trainerd.paths import Layout

log = logging.getLogger("trainerd.preflight")

CACHE_NAME = "preflight.json"
CHILD_TIMEOUT_S = 900.0  # a big model's tokenizer on a slow network disk; a hung child is not a pass


class PreflightError(Exception):
    """The configured model cannot be trained; the message names base_model and the remedy."""


@dataclass
class Result:
    ok: bool
    problem: str = ""
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0  # what the check added (0 when remembered)
    cached: bool = False
    cancelled: bool = False  # `cancel` said stop (a signal) before the check was done


def hf_cache_dir() -> Path:
    """The local hub cache, by huggingface_hub's own precedence of variables."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home) / "hub"


def locate(source: str) -> Path | None:
    """The local folder holding `source` (a directory, or a hub id's newest cached
    snapshot), or None when it is in neither place."""
    p = Path(source).expanduser()
    if p.is_dir():
        return p if (p / "config.json").is_file() or (p / "adapter_config.json").is_file() else None
    if source.startswith(("/", ".", "~")) or source.count("/") > 1:
        return None  # a path, not a hub id
    snaps = hf_cache_dir() / f"models--{source.replace('/', '--')}" / "snapshots"
    try:
        found = sorted((d for d in snaps.iterdir() if (d / "config.json").exists()),
                       key=lambda d: d.stat().st_mtime)
    except OSError:
        return None
    return found[-1] if found else None


def targets(layout: Layout, cfg: Config) -> tuple[str, str]:
    """(weights, tokenizer) of what the next worker will load: the current version's."""
    from trainerd.line.refs import current

    ref = current(layout, cfg)
    return ref.base, ref.tokenizer_source


def _fingerprint(folders: list[Path]) -> list[list]:
    out: list[list] = []
    for d in folders:
        for e in sorted(os.scandir(d), key=lambda e: e.name):
            if e.is_file():
                st = e.stat()
                out.append([str(d), e.name, st.st_size, st.st_mtime_ns])
    return out


def missing_sentence(cfg: Config, weights: str) -> str:
    where = f"the local Hugging Face cache ({hf_cache_dir()})"
    what = "base_model" if weights == cfg.base_model else f"base_model's weights ({weights})"
    return (f"{what} = {weights!r} is neither a local model directory (with config.json) nor in {where}; "
            "trainerd runs offline. Set base_model in trainerd.toml to a local model folder, or download "
            f"it first (`huggingface-cli download {weights}`)")


def check(layout: Layout, cfg: Config, *, remember: bool = True,
          cancel: Callable[[], bool] = lambda: False) -> Result:
    """Locate, then load in a child process (or trust a remembered success). `cancel` is
    polled while the child runs: true ends the check (the child is killed), cancelled."""
    try:
        weights, tok_source = targets(layout, cfg)
    except Exception as e:  # a damaged current version: the worker would fail on it too
        return Result(False, f"the current model version cannot be read ({e}); see `trainerd models show`")
    quant, fsdp = cfg.train.quantization, bool(cfg.train.fsdp)
    folders = [locate(weights), locate(tok_source)]
    if folders[0] is None:
        return Result(False, missing_sentence(cfg, weights))
    if folders[1] is None:
        return Result(False, f"the tokenizer source {tok_source!r} of the current model is missing; "
                      "see `trainerd models show` or roll back")
    try:
        # The quantization is part of what was checked: a success without it proves nothing.
        fp = [*_fingerprint([f for f in dict.fromkeys(folders) if f is not None]), ["quantization", quant, "fsdp", fsdp]]
    except OSError as e:
        return Result(False, f"cannot read the model folder {folders[0]} ({e.strerror}); fix its permissions")
    cache = layout.run / CACHE_NAME
    if remember:
        try:
            if atomic.read_json(cache).get("fingerprint") == fp:
                return Result(True, cached=True)
        except (OSError, ValueError):
            pass
    res = _child(weights, tok_source, cancel, quant, fsdp)
    if res.cancelled:
        return res
    if res.ok and remember:
        try:
            atomic.write_json(cache, {"fingerprint": fp, "at": time.time(), "seconds": res.seconds})
        except OSError as e:  # only an optimisation
            log.warning("preflight result not remembered (%s)", e.strerror or e)
    if not res.ok:
        res.problem = f"base_model = {cfg.base_model!r}: {res.problem}"
    return res


def _child(weights: str, tok_source: str, cancel: Callable[[], bool], quantization: str = "none",
           fsdp: bool = False) -> Result:
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "trainerd.worker.preflight", "--weights", weights,
                          "--tokenizer", tok_source, "--quantization", quantization,
                          *(["--fsdp"] if fsdp else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=child_env(), stdin=subprocess.DEVNULL)
    while True:
        try:
            stdout, stderr = p.communicate(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            late = time.monotonic() - t0 > CHILD_TIMEOUT_S
            if late or cancel():
                p.kill()
                p.communicate()
                if not late:
                    return Result(False, "cancelled", seconds=time.monotonic() - t0, cancelled=True)
                return Result(False, f"loading its config and tokenizer took over {CHILD_TIMEOUT_S:.0f} s; "
                              "check the disk it is on", seconds=time.monotonic() - t0)
    seconds = time.monotonic() - t0
    try:
        out = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        return Result(False, f"the model check process failed (exit {p.returncode}): {tail}", seconds=seconds)
    return Result(bool(out.get("ok")), out.get("problem", ""), out.get("warnings", []), seconds)


class ModelGuard:
    """The daemon's model pause: set when the model is gone (seen before a spawn, or said by
    a worker), cleared when a full check passes again; retried every RETRY_S and on SIGHUP."""

    RETRY_S = 30.0

    def __init__(self, layout: Layout, cfg: Config):
        self.layout, self.cfg = layout, cfg
        self.pause: str | None = None
        self._retry_at = 0.0

    def set_pause(self, why: str) -> None:
        if self.pause is None:
            log.error("pausing: %s", why)
        self.pause = why
        self._retry_at = time.monotonic() + self.RETRY_S

    def ready(self) -> bool:
        """Before claiming a job: is the model still there (stat only)? Pauses if not."""
        if self.pause is not None:
            self.retry()
            return self.pause is None
        try:
            weights, tok_source = targets(self.layout, self.cfg)
        except Exception:
            return True  # a damaged version is the worker's to report, with the details
        if locate(weights) is None:
            self.set_pause(missing_sentence(self.cfg, weights))
        elif locate(tok_source) is None:
            self.set_pause(f"the tokenizer source {tok_source!r} of the current model is missing")
        return self.pause is None

    def retry(self, now: bool = False) -> None:
        """A paused daemon looks again (every RETRY_S, or `now` after a SIGHUP)."""
        if self.pause is None or (not now and time.monotonic() < self._retry_at):
            return
        self._retry_at = time.monotonic() + self.RETRY_S
        if locate(targets(self.layout, self.cfg)[0]) is None:
            return  # still gone: not worth a child process
        res = check(self.layout, self.cfg, remember=False)
        if res.ok:
            log.warning("the model is back (%s); resuming", self.cfg.base_model)
            self.pause = None
        else:
            self.pause = res.problem
