"""The live console: what it shows, and `edge-agent run` drawing it in a terminal but not under a pipe (systemd)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from rich.console import Console

from agent.records import Emit
from hal.types import Quality

pytestmark = pytest.mark.slow  # the agent's live view on the emulated plant

ROOT = Path(__file__).resolve().parents[2]


def test_the_view_shows_values_quality_zone_bearing_indicators_state_and_availability(tmp_path: Path) -> None:
    from agent.config import parse
    from agent.console import LiveView
    from agent.pipeline import Pipeline

    raw = tomllib.loads((ROOT / "examples" / "plant.toml").read_text())
    agent = Pipeline(parse(raw, "examples/plant.toml"), tmp_path / "state")
    try:
        out = io.StringIO()
        view = LiveView(agent, console=Console(file=out, width=160, color_system=None)).attach()
        now = time.time_ns()
        for e in (
            Emit("features", "spindle_vibration", now - 2 * 10**9, {
                "unit": "m/s2", "rate_hz": 1600.0, "n": 1600, "zone": "C", "gap_before": 12,
                "features": {"x": {"rms": 4.21, "velocity_rms": 3.41, "kurtosis": 3.2, "bpfo": 2.07, "bpfi": 0.031,
                                   "env_rms": 0.9},
                             "y": {"rms": 3.0, "velocity_rms": 2.9, "kurtosis": 3.0, "bpfo": 1.5, "bpfi": 0.02,
                                   "env_rms": 0.7}}}),
            Emit("reading", "energy.power_total", now - 5 * 10**9, {"value": None, "unit": "W",
                                                                     "error": "timeout: no answer from unit 1"},
                 Quality.BAD),
            Emit("reading", "motor.current", now, {"value": 12.07, "unit": "A"}),
            Emit("features", "motor.current.state", now, {"state": "running", "interval_s": 120.0, "off_s": 20.0,
                                                          "idle_s": 30.0, "running_s": 70.0, "availability": 0.583333}),
            Emit("event", "spindle_vibration.events", now, {"event": "zone", "zone": "C", "previous": "B"}),
        ):
            agent.outbox.put(e)  # what the pipeline does; the view observes the outbox
        Console.print(view.console, view.render())
        text = out.getvalue()
    finally:
        agent.context.close()
    assert "edge-agent plant" in text and "link" in text and "msg/s" in text
    vib = next(line for line in text.splitlines() if "spindle_vibration " in line)
    for part in ("C", "3.41", "4.21", "2.07", "0.031", "12"):  # the worst axis of each indicator, the gap
        assert part in vib, (part, vib)
    assert "timeout: no answer from unit 1" in text and "bad" in text
    assert "12.07" in text and "good" in text
    assert "availability 58.3 %" in text and "running 70 s, idle 30 s, off 20 s" in text
    assert "zone → C (was B)" in text
    assert "waiting" in text  # sensors with nothing yet say so


def _run(args: list[str], tty: bool, tmp: Path, port: int) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "agent", "run", "-c", str(ROOT / "examples" / "plant.toml"), "--broker",
           f"mqtt://127.0.0.1:{port}", "--state-dir", str(tmp / "state"), "--status-socket", str(tmp / "s.sock"),
           "--drain-s", "1", *args]
    env = dict(os.environ, COLUMNS="140", LINES="80")
    if not tty:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env, cwd=ROOT)
        return p.returncode, p.stdout, p.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    rc = proc.wait(30)
    os.close(master)
    assert proc.stderr is not None
    return rc, b"".join(chunks).decode(errors="replace"), proc.stderr.read().decode(errors="replace")


def test_run_draws_the_view_in_a_terminal_and_logs_plain_lines_through_a_pipe(tmp_path: Path, broker) -> None:
    rc, out, err = _run(["--scenario", "demo", "--speed", "4", "--duration", "8"], True, tmp_path / "a", broker.port)
    assert rc == 0, err
    assert "vibration" in out and "sensors" in out and "scenario demo" in out and "machine" in out
    assert "motor.current" in out and "spindle_vibration" in out
    assert "×4" in out  # plant time runs four times faster
    rc, out, err = _run(["--scenario", "demo", "--speed", "4", "--duration", "3"], False, tmp_path / "b",
                        broker.port)
    assert rc == 0, err
    assert out == ""  # no view: stdout stays clean under systemd
    assert "scenario demo: started" in err and "emulating at 4x real time" in err


def test_speed_and_scenario_need_emulated_buses_and_a_known_scenario(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "agent", "run", "-c", str(ROOT / "examples" / "hardware.toml"), "--speed", "5",
           "--state-dir", str(tmp_path / "s")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and "real (add --emulate)" in p.stderr
    p = subprocess.run(cmd[:6] + ["--scenario", "no-such", "--emulate", "--state-dir", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and "expected a shipped scenario" in p.stderr
