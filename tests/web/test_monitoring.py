"""docs/monitoring/: the alert rules pass promtool's check and their unit tests, and every
trainerd metric the rules and the dashboard name is one /metrics really serves."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, make_base, tool
from trainerd.config import ServerConfig
from trainerd.paths import Layout
from trainerd.web.server import start_server

DOCS = ROOT / "docs" / "monitoring"
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_info", "_created")


def promtool(*args: str) -> None:
    p = subprocess.run([tool("promtool", "prometheus"), *args], cwd=DOCS, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_alert_rules_check_and_unit_tests():
    promtool("check", "rules", "alerts.yml")
    promtool("test", "rules", "alerts.test.yml")


def test_rules_and_dashboard_name_only_served_metrics(tmp_path: Path):
    h = start_server(Layout.at(make_base(tmp_path / "base", "unused-model")), ServerConfig(port=0), time.time)
    try:
        import urllib.request

        with urllib.request.urlopen(h.url + "metrics", timeout=10) as r:
            served = {f.name for f in text_string_to_metric_families(r.read().decode())}
    finally:
        h.stop()
    dash = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    text = (DOCS / "alerts.yml").read_text() + "\n".join(exprs)
    named = set(re.findall(r"\btrainerd_[a-z_]+", text))
    assert named, "no trainerd metric found in the rules"

    def family(name: str) -> str:
        for s in SUFFIXES:
            if name.endswith(s) and name[: -len(s)] in served:
                return name[: -len(s)]
        return name

    assert {family(n) for n in named} <= served, {family(n) for n in named} - served
