"""The on-disk layout of DESIGN.md, in one place. Nothing else builds these paths by hand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRIORITIES = ("high", "normal", "low")  # claim order


@dataclass(frozen=True)
class Layout:
    base: Path

    @classmethod
    def at(cls, base: str | Path) -> Layout:
        return cls(Path(base).expanduser().resolve())

    @property
    def config(self) -> Path:
        return self.base / "trainerd.toml"

    @property
    def inbox(self) -> Path:
        return self.base / "inbox"

    @property
    def jobs(self) -> Path:
        return self.base / "jobs"

    @property
    def incoming(self) -> Path:
        """Where a job is assembled (data + job.json) before one rename queues it."""
        return self.jobs / ".incoming"

    def queued(self, priority: str) -> Path:
        return self.jobs / "queued" / priority

    @property
    def active(self) -> Path:
        return self.jobs / "active"

    @property
    def done(self) -> Path:
        return self.jobs / "done"

    @property
    def failed(self) -> Path:
        return self.jobs / "failed"

    @property
    def control(self) -> Path:
        return self.base / "control"

    @property
    def stop_file(self) -> Path:
        """`touch BASE/.stop`: the original daemon's stop switch, kept as an alias of stop."""
        return self.base / ".stop"

    @property
    def models(self) -> Path:
        return self.base / "models"

    @property
    def current_model(self) -> Path:
        return self.models / "current"

    @property
    def snapshots(self) -> Path:
        return self.base / "snapshots"

    @property
    def state_db(self) -> Path:
        return self.base / "state.db"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def run(self) -> Path:
        return self.base / "run"

    @property
    def lock(self) -> Path:
        return self.run / "trainerd.lock"

    @property
    def status(self) -> Path:
        return self.run / "status.json"

    @property
    def publish_json(self) -> Path:
        """The [publish] hooks' last outcomes (written by trainerd.publish, read by status)."""
        return self.run / "publish.json"

    def dirs(self) -> list[Path]:
        return [
            self.inbox,
            self.incoming,
            *(self.queued(p) for p in PRIORITIES),
            self.active,
            self.done,
            self.failed,
            self.control,
            self.models,
            self.snapshots,
            self.logs,
            self.run,
        ]

    def ensure(self) -> None:
        """Make the folders that are missing, durably: a folder whose own name is not
        durable loses everything later renamed into it (fsynced there) at a power cut."""
        from trainerd.atomic import fsync_dir

        for d in self.dirs():
            missing = [p for p in (d, *d.parents) if not p.exists()][::-1]
            if not missing:
                continue
            d.mkdir(parents=True, exist_ok=True)
            for p in missing:
                fsync_dir(p.parent)
