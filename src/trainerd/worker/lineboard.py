"""One TensorBoard run for the whole model line: BASE/tensorboard/line.

Beside each job's own run (job_dir/tensorboard, steps from 1), this run's step continues
across jobs: a version records `line_step` (its parent's plus its own steps) in its
manifest, and the next job logs at that offset. `tensorboard --logdir BASE` then shows the
per-job runs and the line's whole history as one curve: training loss and learning rate
per step, and at each job's end its probe scores (overall and per tag) and its recall loss
on each job's sample (`recall/<job-id>`: a column of the forgetting matrix) and their mean.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainerd.line.refs import ModelRef
from trainerd.paths import Layout

log = logging.getLogger("trainerd.worker.lineboard")

LINE_RUN = ("tensorboard", "line")


def summary_writer(log_dir: Path) -> Any:
    """A TensorBoard SummaryWriter for log_dir, or None (a log line) when none can be made.
    Each job's run (trainerd.worker.train) and the line's run use it."""
    try:
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package
        except ImportError:
            from tensorboardX import SummaryWriter
        return SummaryWriter(log_dir=str(log_dir))
    except Exception as e:  # not installed, or installed but broken (e.g. a protobuf clash)
        log.info("no TensorBoard event files in %s (pip install tensorboardX): %s", log_dir, e)
        return None


def offset(parent: ModelRef) -> int:
    """Optimizer steps of the line before this job (0 on the base model)."""
    return int(parent.manifest.get("line_step") or 0)


def callback(layout: Layout, parent: ModelRef) -> Any:
    """A TrainerCallback writing the line run, or None without a TensorBoard writer."""
    from transformers import TrainerCallback

    writer = summary_writer(layout.base.joinpath(*LINE_RUN))
    if writer is None:
        return None
    start = offset(parent)

    class LineBoard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if state.is_world_process_zero and logs.get("loss") is not None:
                writer.add_scalar("train/loss", logs["loss"], start + state.global_step)
                if logs.get("learning_rate") is not None:
                    writer.add_scalar("train/learning_rate", logs["learning_rate"], start + state.global_step)

        def scores(self, steps: int, scored: dict[str, Any]) -> None:
            """The job's end-of-job scores at its last line step."""
            step = start + steps
            s = scored.get("scores") or {}
            probe = s.get("probe") or {}
            for key in ("loss", "exact_match", "similarity"):
                if probe.get(key) is not None:
                    writer.add_scalar(f"probe/{key}", probe[key], step)
                for tag, values in (probe.get("groups") or {}).items():
                    for value, sc in values.items():
                        if sc.get(key) is not None:
                            writer.add_scalar(f"probe_{tag}/{value}/{key}", sc[key], step)
            # A column of the forgetting matrix per job: its recall loss at each later version.
            for job, loss in (s.get("recall") or {}).items():
                if loss is not None:
                    writer.add_scalar(f"recall/{job}", loss, step)
            recall = [v for v in (s.get("recall") or {}).values() if v is not None]
            if recall:
                writer.add_scalar("recall/mean_loss", sum(recall) / len(recall), step)
            writer.flush()

        def on_train_end(self, args, state, control, **kw):
            writer.flush()

    return LineBoard()
