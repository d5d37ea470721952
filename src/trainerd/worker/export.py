"""`python -m trainerd.worker.export --base-dir B VERSION DEST`: `trainerd models export
--merged` in a process of its own, because merging an adapter into its base loads the model
(torch) and the CLI process never imports torch.

It runs the very call the CLI made before (trainerd.lifecycle.export with merged=True: the
same checks, the same sentences) and answers in trainerd.children's format; a
LifecycleError or ConfigError is an `error` record and exit 1, as the CLI's own failures.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainerd import children, lifecycle
from trainerd.config import ConfigError
from trainerd.paths import Layout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainerd.worker.export")
    ap.add_argument("--base-dir", type=Path, required=True)
    ap.add_argument("version")
    ap.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    channel = children.Channel()
    try:
        result = lifecycle.export(Layout.at(args.base_dir), args.version, args.dest, merged=True)
    except (lifecycle.LifecycleError, ConfigError) as e:
        channel.error(str(e))
        return 1
    channel.result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
