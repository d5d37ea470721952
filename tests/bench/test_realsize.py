"""bench/realsize.py at test size: the real-size bench's own code, through a real daemon."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_realsize_tiny_through_the_daemon(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "realsize.py"), "--tiny", "--no-plain",
                        "--examples", "8", "--work-dir", str(tmp_path / "w"), "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    lora = r["lora"]
    assert lora["steps"] == 2 and lora["tokens_per_s"] > 0  # 8 examples, micro-batch 4
    assert 50 * 2**20 < lora["peak_rss_bytes"] < 8 * 2**30  # a Python + torch process, in bytes
    assert lora["checkpoint_bytes"] > 0 and lora["version_bytes"] > 0
    assert lora["publish_s"] is not None and lora["save_s"] >= 0
    assert r["lora_overhead_at_default_cadence"] >= 1.0
    line = r["full_line"]
    assert not line["measured"]  # computed: the fp32 weights just saved + Adam's two moments
    assert line["per_job_bytes"] == r["model"]["weights_bytes"]
    assert line["steady_state_bytes"] == line["versions_bytes"] + line["snapshots_bytes"] + line["while_training_bytes"]
