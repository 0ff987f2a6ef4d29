"""The unit file: `systemd-analyze verify` prints nothing, `security --offline=yes` rates it 2.0 or lower, and it
carries what the agent relies on (notify + watchdog, directories, the Numba cache, the device allow-list)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.paths import ROOT

REPO = ROOT
UNIT = REPO / "systemd" / "edge-agent.service"
ANALYZE = shutil.which("systemd-analyze")

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root directory holding systemd's own units and every program the unit runs (placeholders), so that
    `verify --root` checks our unit, its dependencies and its Exec paths without touching /etc or /opt."""
    root = tmp_path_factory.mktemp("root")
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for link, target in (("lib", "usr/lib"), ("bin", "usr/bin"), ("sbin", "usr/sbin")):
        (root / link).symlink_to(target)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for values in (v for k, v in directives(UNIT.read_text()).items() if k.startswith("Exec")):
        for v in values:
            exe = v.lstrip("-@:+!").split()[0]
            path = root / exe.lstrip("/")
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("#!/bin/sh\n")
                path.chmod(0o755)
    return root


def verify(root: Path, text: str) -> subprocess.CompletedProcess[str]:
    (root / "etc/systemd/system/edge-agent.service").write_text(text)
    return subprocess.run([ANALYZE, "verify", f"--root={root}", "edge-agent.service"], capture_output=True,
                          text=True, timeout=60)


@needs_analyze
def test_verify_prints_nothing(unit_root: Path) -> None:
    r = verify(unit_root, UNIT.read_text())
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


@needs_analyze
def test_verify_would_catch_a_misspelt_key(unit_root: Path) -> None:
    """verify exits 0 on unknown keys and only warns: the test above must treat any output as a failure."""
    r = verify(unit_root, UNIT.read_text().replace("WatchdogSec=", "WatchDogSec="))
    assert "Unknown key 'WatchDogSec'" in r.stdout + r.stderr


@needs_analyze
def test_exposure_is_2_or_lower() -> None:
    r = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def test_the_unit_carries_what_the_agent_relies_on() -> None:
    d = directives(UNIT.read_text())
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert int(one["WatchdogSec"]) >= 10
    assert one["Restart"] == "on-failure" and int(one["StartLimitBurst"]) > 0 and int(one["StartLimitIntervalSec"]) > 0
    assert one["User"] == "edge-agent" and set(one["SupplementaryGroups"].split()) == {"gpio", "i2c", "dialout"}
    for key in ("StateDirectory", "CacheDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert one[key] == "edge-agent"
    env = dict(kv.split("=", 1) for v in d["Environment"] for kv in v.split())
    assert env["NUMBA_CACHE_DIR"].startswith(f"/var/cache/{one['CacheDirectory']}/")  # writable under strict
    assert d["ExecStartPre"] == ["-/opt/edge-agent/venv/bin/edge-agent warmup"]  # a failed warm-up is not fatal
    assert d["ExecStart"] == ["/opt/edge-agent/venv/bin/edge-agent run --config /etc/edge-agent/agent.toml"]
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "ProtectKernelTunables", "ProtectControlGroups"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict" and one["CapabilityBoundingSet"] == "" and one["DevicePolicy"] == "closed"
    assert {v.split()[0] for v in d["DeviceAllow"]} >= {"char-gpiochip", "char-i2c", "char-ttyAMA", "char-ttyUSB"}
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one["MemoryMax"].endswith("M") and int(one["MemoryMax"][:-1]) <= 512
    assert "MemoryDenyWriteExecute" not in d  # Numba's JIT needs executable mappings


def _commands() -> dict:
    from agent.cli import build_parser
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def test_every_edge_agent_command_the_unit_runs_exists() -> None:
    choices = _commands()
    d = directives(UNIT.read_text())
    for v in d["ExecStartPre"] + d["ExecStart"]:
        words = v.lstrip("-@:+!").split()
        assert words[0] == "/opt/edge-agent/venv/bin/edge-agent"
        assert words[1] in choices, f"`edge-agent {words[1]}` (from the unit) is not a command"
