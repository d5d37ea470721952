"""Typed configuration: the pydantic models (trainerd.config.schema) are the schema of
trainerd.toml; this module loads and checks a file.

A bad file refuses to start and lists every error at once, each with its key, what was
found and what is allowed (litgpt-style), so one edit fixes them all.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from trainerd.config.default import DEFAULT_TOML
from trainerd.config.schema import (
    CheckpointConfig,
    Config,
    ConsolidateConfig,
    DaemonConfig,
    DataConfig,
    DataMapConfig,
    DiskConfig,
    EvalConfig,
    GateConfig,
    LoraConfig,
    PublishConfig,
    QueueConfig,
    ReplayConfig,
    RetentionConfig,
    ScheduleConfig,
    ServerConfig,
    TrainConfig,
    parse_at,
)

__all__ = [
    "DEFAULT_TOML", "CheckpointConfig", "Config", "ConfigError", "ConsolidateConfig", "DaemonConfig",
    "DataConfig", "DataMapConfig", "DiskConfig", "EvalConfig", "GateConfig", "LoraConfig",
    "PublishConfig", "QueueConfig", "ReplayConfig", "RetentionConfig", "ScheduleConfig",
    "ServerConfig", "TrainConfig", "load_config", "parse_at", "parse_config",
]


class ConfigError(Exception):
    """Every problem with a config file, with keys and what is allowed; raised once."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{path}: {len(problems)} problem(s) in the config; trainerd will not start until "
            f"they are fixed:\n{lines}"
        )


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key (typo?); remove it or check the documented keys"
    if kind == "missing":
        return f"{key}: required but missing"
    found = err.get("input")
    allowed = err.get("ctx", {}).get("expected")
    msg = err["msg"]
    if allowed:
        return f"{key}: {found!r} is not allowed; expected {allowed}"
    return f"{key}: {msg} (found {found!r})"


def parse_config(data: dict, path: Path) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(path, [_describe(err) for err in e.errors()]) from None


def load_config(path: Path) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, ["file not found; create it with `trainerd init --base-dir DIR`"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(path, [f"not UTF-8 text at byte {e.start}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"TOML syntax: {e}"]) from None
    cfg = parse_config(data, path)
    # A relative base_model that exists next to the config is resolved against it.
    candidate = path.parent / cfg.base_model
    if not Path(cfg.base_model).is_absolute() and candidate.exists():
        cfg.base_model = str(candidate.resolve())
    return cfg
