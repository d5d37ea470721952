"""The unit `trainerd systemd-unit` prints, judged by systemd's own tools: exposure <= 4.5
in `systemd-analyze security --offline=yes`, nothing to say from `systemd-analyze verify`.

Both tools read the unit file alone (no running systemd needed; systemd 250+ for
--offline). A user unit is checked with `--user` against a private XDG_RUNTIME_DIR.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli, make_base, tool
from trainerd import systemd
from trainerd.systemd import UnitError, UnitSpec, resolve_user, unit

EXPOSURE_MAX = 4.5


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_base(tmp_path / "base", "unused-model")


def analyze(unit_text: str, where: Path, user_unit: bool = False) -> float:
    """Exposure score; asserts `verify` finds nothing wrong with the unit."""
    exe = tool("systemd-analyze", "systemd")
    where.mkdir(parents=True, exist_ok=True)
    path = where / "trainerd.service"
    path.write_text(unit_text)
    scope: list[str] = []
    env = dict(os.environ)
    if user_unit:
        run_dir = where / "xdg"
        run_dir.mkdir(mode=0o700, exist_ok=True)
        scope, env["XDG_RUNTIME_DIR"] = ["--user"], str(run_dir)
    v = subprocess.run([exe, *scope, "verify", str(path)], capture_output=True, text=True, timeout=60, env=env)
    said = [line for line in (v.stdout + v.stderr).splitlines() if "trainerd.service" in line]
    assert v.returncode == 0 and not said, v.stdout + v.stderr
    s = subprocess.run([exe, *scope, "security", "--offline=yes", str(path)], capture_output=True, text=True,
                       timeout=60, env=env)
    if "--offline" in s.stderr and ("unrecognized" in s.stderr or "Unknown" in s.stderr):
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        pytest.skip(f"{version} has no `security --offline` (systemd 250 added it); the unit cannot be scored "
                    "without a running systemd here")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", s.stdout + s.stderr)
    assert m, s.stdout + s.stderr
    return float(m.group(1))


def test_cli_unit_is_hardened(base, tmp_path):
    who = ["--as-root"] if os.geteuid() == 0 else []
    text = cli("systemd-unit", "--base-dir", base, *who).stdout
    for line in ("Type=notify", "WatchdogSec=", "KillSignal=SIGTERM", "Restart=on-failure", "TimeoutStopSec=900",
                 "TimeoutStartSec=900", "RestartPreventExitStatus=2", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 f"ReadWritePaths={base}", "PrivateTmp=yes", "UMask=0027", "CapabilityBoundingSet=\n",
                 "SystemCallFilter=@system-service", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"):
        assert line in text, line
    assert re.search(r"^User=\S+$", text, re.M) and re.search(r"^Group=\S+$", text, re.M)
    assert analyze(text, tmp_path / "cli") <= EXPOSURE_MAX


@pytest.mark.parametrize("variant", ["service-user", "root", "gpu", "user-unit", "home"])
def test_every_variant_scores_at_most_4_5(base, tmp_path, variant):
    spec = UnitSpec(base, "trainerd", "trainerd")
    if variant == "root":
        spec.user, spec.group = resolve_user(None, None, True, False)
    elif variant == "gpu":
        spec.gpu = True
    elif variant == "user-unit":
        spec.user = spec.group = None
        spec.user_unit = True
    elif variant == "home":
        spec.base, spec.hf_home = Path("/home/ann/trainerd"), Path("/home/ann/.cache/huggingface")
    text = unit(spec)
    if variant == "gpu":
        assert "DeviceAllow=char-nvidia-frontend rw" in text and "PrivateDevices=no" in text
    if variant == "user-unit":
        assert "User=" not in text and "WantedBy=default.target" in text
    if variant == "home":
        # /home hidden except what the daemon needs, bound back in.
        assert "ProtectHome=tmpfs" in text
        assert "BindPaths=/home/ann/trainerd -/home/ann/.cache/huggingface" in text
    if variant == "home":
        return  # verify would look for /home/ann; the strings are what matters here
    assert analyze(text, tmp_path / variant, user_unit=variant == "user-unit") <= EXPOSURE_MAX


def test_user_rules(monkeypatch):
    monkeypatch.setattr(systemd.os, "geteuid", lambda: 0)
    with pytest.raises(UnitError, match="--user NAME"):
        resolve_user(None, None, False, False)
    assert resolve_user(None, None, True, False) == ("root", "root")
    assert resolve_user("svc", "svcgrp", False, False) == ("svc", "svcgrp")
    assert resolve_user("no-such-user-here", None, False, False) == ("no-such-user-here", "no-such-user-here")
    with pytest.raises(UnitError, match="contradict"):
        resolve_user("svc", None, True, False)
    with pytest.raises(UnitError, match="--user-unit"):
        resolve_user("svc", None, False, True)
    assert resolve_user(None, None, False, True) == (None, None)
    monkeypatch.setattr(systemd.os, "geteuid", lambda: os.getuid() if os.getuid() else 65534)
    user, _group = resolve_user(None, None, False, False)
    assert user and user != "root"


def test_root_without_user_is_refused_by_the_cli(base):
    if os.geteuid() != 0:
        pytest.skip("needs root: as anyone else the unit runs as the invoking user")
    p = cli("systemd-unit", "--base-dir", base, check=False)
    assert p.returncode == 2 and "--user NAME" in p.stderr and "--as-root" in p.stderr


def test_bad_config_exits_with_the_status_the_unit_does_not_restart(tmp_path):
    base = make_base(tmp_path / "bad", "unused-model", "[queue]\nmax_attempts = 'many'\n")
    p = cli("run", "--base-dir", base, "--once", check=False, timeout=60)
    assert p.returncode in systemd.NO_RESTART_STATUS, p.stdout + p.stderr
