"""install.sh / uninstall.sh: shell checks, and a staged install (`--root DIR`: files for real, privileged steps
printed) run twice to show it is idempotent and keeps the operator's config; uninstall keeps the data unless
--purge. Nothing is written outside tmp dirs; no user is created."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load

from tests.paths import ROOT

REPO = ROOT
INSTALL = REPO / "systemd" / "install.sh"
UNINSTALL = REPO / "systemd" / "uninstall.sh"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL], ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(script: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, "")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_staged_install_is_complete_and_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    first = run(str(INSTALL), "--root", str(root), "--skip-venv", "--admin", "root")
    assert first.returncode == 0, first.stderr
    unit = root / "etc/systemd/system/edge-agent.service"
    config = root / "etc/edge-agent/agent.toml"
    assert unit.read_bytes() == (REPO / "systemd/edge-agent.service").read_bytes() and _mode(unit) == 0o644
    assert _mode(config) == 0o640
    assert load(config).sensors  # the starter config is valid: the service starts with it
    for d in ("etc/edge-agent", "var/lib/edge-agent", "var/cache/edge-agent/numba"):
        assert _mode(root / d) == 0o750, d
    out = first.stdout
    assert "(staged, not run) useradd --system --user-group --home-dir /var/lib/edge-agent" in out
    assert "(staged, not run) usermod -a -G gpio,i2c,dialout edge-agent" in out
    assert f"(staged, not run) chown edge-agent:edge-agent {root}/var/lib/edge-agent" in out
    assert "(staged, not run) systemctl enable --now edge-agent" in out

    config.write_text(config.read_text().replace('url = "mqtt://localhost:1883"', 'url = "mqtt://10.0.0.5:1883"'))
    second = run(str(INSTALL), "--root", str(root), "--skip-venv")
    assert second.returncode == 0, second.stderr
    assert f"unchanged {unit}" in second.stdout
    assert f"keeping {config}" in second.stdout
    assert "mqtt://10.0.0.5:1883" in config.read_text()  # the operator's edit survives
    starter = (REPO / "systemd/agent.toml.starter").read_bytes()
    assert (root / "etc/edge-agent/agent.toml.example").read_bytes() == starter
    third = run(str(INSTALL), "--root", str(root), "--skip-venv")
    assert "installed" not in third.stdout.replace("(staged", "")  # nothing left to change


def test_uninstall_keeps_the_data_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert run(str(INSTALL), "--root", str(root), "--skip-venv").returncode == 0
    outbox = root / "var/lib/edge-agent/outbox.db"
    outbox.write_bytes(b"unsent records")
    r = run(str(UNINSTALL), "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert not (root / "etc/systemd/system/edge-agent.service").exists() and not (root / "opt/edge-agent").exists()
    assert outbox.read_bytes() == b"unsent records" and (root / "etc/edge-agent/agent.toml").exists()
    assert "kept:" in r.stdout
    r = run(str(UNINSTALL), "--root", str(root), "--purge", "--yes")
    assert r.returncode == 0, r.stderr
    assert not outbox.exists() and not (root / "etc/edge-agent").exists()
    assert not (root / "var/cache/edge-agent").exists()
    assert "(staged, not run) userdel edge-agent" in r.stdout


@pytest.mark.parametrize("argv, message", [
    (["--root", "/no/such/dir"], "--root /no/such/dir: not a directory"),
    (["--frobnicate"], "unknown option '--frobnicate' (see --help)"),
    (["--source", "/tmp", "--root", "/tmp"], "no pyproject.toml in /tmp"),
])
def test_install_refuses_bad_options_clearly(argv: list[str], message: str) -> None:
    r = run(str(INSTALL), *argv)
    assert r.returncode == 1 and message in r.stderr


def test_edge_agent_install_runs_the_script(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    r = subprocess.run([sys.executable, "-m", "agent", "install", "--root", str(root), "--skip-venv", "--no-start"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (root / "etc/systemd/system/edge-agent.service").exists()
    assert "enable --now" not in r.stdout
    r = subprocess.run([sys.executable, "-m", "agent", "uninstall", "--root", str(root)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and not (root / "etc/systemd/system/edge-agent.service").exists()
