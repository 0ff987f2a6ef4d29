"""`edge-agent run` as systemd runs it: a real NOTIFY_SOCKET, WATCHDOG_USEC and RUNTIME_DIRECTORY; READY, watchdog
pings, the status socket, SIGHUP with a bad then a good config, SIGTERM with STOPPING=1 and exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.service import read_status
from tests.agent.service.helpers import NotifyListener

pytestmark = pytest.mark.slow  # `edge-agent run` under a fake systemd

CONFIG = """
[agent]
id = "unit1"

[mqtt]
url = "mqtt://127.0.0.1:{port}"

[[sensors]]
name = "temp"
driver = "emulated.temperature"
interval_s = 0.2
"""


def _wait_msg(listener: NotifyListener, key: str, timeout: float = 60.0, value: str | None = None,
              since: int | None = None) -> dict:
    """The first message with `key` (containing `value`) received after index `since` of the listener's messages
    (default: from now on). Pass `since` when waiting for the second of two messages one event causes: one drain
    can read both, and the second would then be behind a mark taken afterwards."""
    deadline = time.monotonic() + timeout
    seen = len(listener.messages) if since is None else since
    while time.monotonic() < deadline:
        listener.drain()
        for m in listener.messages[seen:]:
            if key in m and (value is None or value in m[key]):
                return m
        time.sleep(0.05)
    raise AssertionError(f"no {key} ({value}) within {timeout} s; got {listener.messages[-5:]}")


def test_run_under_a_notify_socket(broker, tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG.format(port=broker.port))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = dict(os.environ, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="10000000", RUNTIME_DIRECTORY=str(run_dir))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg), "--state-dir",
                             str(tmp_path / "state")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ready = _wait_msg(listener, "READY")
        assert "1 sensors; outbox" in ready["STATUS"]
        _wait_msg(listener, "WATCHDOG")
        doc = read_status(run_dir / "status.sock")
        assert doc["agent"] == "unit1" and doc["pid"] == proc.pid

        cfg.write_text(CONFIG.format(port=broker.port).replace("interval_s = 0.2", "interval_s = -1"))
        proc.send_signal(signal.SIGHUP)
        rejected = _wait_msg(listener, "STATUS", value="reload rejected")
        assert rejected.get("READY") == "1" and "interval_s" in rejected["STATUS"]
        assert proc.poll() is None  # still running the previous configuration
        _wait_msg(listener, "WATCHDOG")

        cfg.write_text(CONFIG.format(port=broker.port).replace('id = "unit1"', 'id = "unit2"'))
        listener.drain()
        mark = len(listener.messages)  # RELOADING and the STATUS after it may arrive in one drain
        proc.send_signal(signal.SIGHUP)
        _wait_msg(listener, "RELOADING", since=mark)
        assert _wait_msg(listener, "STATUS", value="reloaded", since=mark).get("READY") == "1"
        assert read_status(run_dir / "status.sock")["agent"] == "unit2"

        proc.send_signal(signal.SIGTERM)
        assert _wait_msg(listener, "STOPPING")["STOPPING"] == "1"
        assert proc.wait(60) == 0
        assert not (run_dir / "status.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        listener.close()
