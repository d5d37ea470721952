"""`python -m trainerd.worker.launch JOB_DIR --base-dir BASE`: one attempt as a torchrun group.

Used by the supervisor when `[train] nproc` > 1 or torchrun_args are set. This process
takes the job's worker lock, asks to die with the supervisor, and then *becomes* torchrun
(exec), so both survive into the agent: the lock is held for the whole group's life and a
killed daemon never leaves a training group behind (the ranks die with the agent in turn,
see worker/main.py). No torch import here: the exec should not wait for one.

The group reports like a single worker: rank 0 writes worker-outcome.json (torchrun's own
exit status only says whether some rank failed), and the supervisor signals the ranks
themselves for a warm stop, because torchrun gives its workers at most 30 s to exit after
it is signalled -- less than a large model's checkpoint can take.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainerd.config import TrainConfig, load_config
from trainerd.jobs import GROUP_LOCKED_ENV, PARENT_ENV
from trainerd.paths import Layout
from trainerd.worker.main import _die_with_parent, _lock_job

RENDEZVOUS_FLAGS = ("--standalone", "--nnodes", "--rdzv-endpoint", "--rdzv_endpoint", "--rdzv-backend",
                    "--rdzv_backend", "--master-addr", "--master_addr")


def torchrun_command(train: TrainConfig, job_dir: Path, base: Path) -> list[str]:
    """The torchrun command line for one attempt: --standalone (a free local port, one
    node) unless the config names its own rendezvous; never restarted by torchrun itself,
    because attempts, back-off and resume are the supervisor's."""
    extra = list(train.torchrun_args)
    own_rdzv = any(a.split("=", 1)[0] in RENDEZVOUS_FLAGS for a in extra)
    return [sys.executable, "-m", "torch.distributed.run",
            *([] if own_rdzv else ["--standalone"]),
            f"--nproc-per-node={train.nproc}", "--max-restarts=0", *extra,
            "-m", "trainerd.worker", str(job_dir), "--base-dir", str(base)]


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()  # kept across exec: the agent dies with the supervisor
    ap = argparse.ArgumentParser(prog="python -m trainerd.worker.launch")
    ap.add_argument("job_dir", type=Path)
    ap.add_argument("--base-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    job_dir = args.job_dir.resolve()
    layout = Layout.at(args.base_dir)
    cmd = torchrun_command(load_config(layout.config).train, job_dir, layout.base)
    fd = _lock_job(job_dir)
    os.set_inheritable(fd, True)  # the lock lives exactly as long as torchrun's agent
    os.environ[GROUP_LOCKED_ENV] = "1"
    os.environ[PARENT_ENV] = str(os.getpid())  # after exec this pid is the ranks' parent, torchrun
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
