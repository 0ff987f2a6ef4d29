"""The status socket of a running agent (a real Pipeline, real broker, real UNIX socket) and `edge-agent status`."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from agent.cli import main
from agent.service import Service, StatusServer, StatusSocketError, read_status, request
from tests.agent_helpers import run_agent
from tests.agent.service.helpers import service_config, wait


@pytest.fixture
def running(broker, tmp_path: Path):
    agent = run_agent(service_config(broker.port), tmp_path / "state")
    service = Service(agent, status_socket=tmp_path / "run" / "status.sock", environ={})
    service.ready()
    yield agent, service, tmp_path / "run" / "status.sock"
    service.stopping()
    agent.stop(drain_s=0.5)


def _temp(doc: dict) -> dict:
    return next(s for s in doc["sensors"] if s["name"] == "temp")


def test_status_document_of_a_running_agent(running) -> None:
    agent, service, path = running
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert wait(lambda: _temp(read_status(path))["rate_hz"] > 0 and read_status(path)["link"]["state"] == "up")
    doc = read_status(path)
    assert doc["source"] == "service" and doc["agent"] == "svc" and doc["uptime_s"] >= 0
    temp = _temp(doc)
    assert temp["expected_rate_hz"] == 10.0 and temp["driver"] == "emulated.temperature"
    last = temp["streams"]["temp"]["last"]
    assert last["quality"] == "good" and last["unit"] == "degC" and 30 < last["value"] < 50
    assert wait(lambda: "vib" in next(s for s in read_status(path)["sensors"] if s["name"] == "vib")["streams"])
    vib = next(s for s in read_status(path)["sensors"] if s["name"] == "vib")
    assert vib["expected_rate_hz"] == 4.0  # 1000 Hz, one window every 250 samples
    assert set(vib["streams"]["vib"]["last"]["features"]) == {"x", "y"}
    assert isinstance(doc["outbox"]["depth"], int) and doc["outbox"]["path"].endswith("outbox.db")
    assert {"outbox", "uplink", "processing", "reader.temp", "reader.vib"} <= set(doc["stages"])
    assert doc["drops"] == {} and doc["stalled"] == []


def test_status_command_prints_the_running_agent(running, capsys: pytest.CaptureFixture[str]) -> None:
    agent, service, path = running
    assert wait(lambda: _temp(read_status(path))["streams"])
    assert main(["status", "--socket", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["agent"] == "svc" and doc["source"] == "service"
    assert main(["status", "--socket", str(path)]) == 0
    out = capsys.readouterr().out
    assert "edge-agent svc" in out and "running" in out and "temp" in out and "degC" in out
    assert "outbox" in out and "link" in out


def test_a_client_that_sends_nothing_gets_the_status(running) -> None:
    """`socat - UNIX-CONNECT:/run/edge-agent/status.sock` works too."""
    _, _, path = running
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert json.loads(data)["agent"] == "svc"


def test_unknown_requests_get_a_clear_error(running) -> None:
    _, _, path = running
    assert "expected a JSON object with \"cmd\" one of: status, capture" in request(path, {"cmd": "reboot"})["error"]
    answer = request(path, {"cmd": "capture", "sensor": "vib", "seconds": -1})
    assert answer["error"].startswith("expected {\"sensor\": NAME, \"seconds\": S} with 0 < S <= 60")
    answer = request(path, {"cmd": "capture", "sensor": "temp", "seconds": 1})
    assert "expected the name of a stream sensor (vib), got 'temp'" in answer["error"]


def test_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "status.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # a socket file nobody listens on: left by an agent killed with -9
    first = StatusServer(path, lambda: {"n": 1})
    first.start()
    try:
        assert read_status(path) == {"n": 1}
        with pytest.raises(StatusSocketError, match="another edge-agent is serving"):
            StatusServer(path, lambda: {"n": 2}).start()
    finally:
        first.stop()
    assert not path.exists()
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(StatusSocketError, match="exists and is not a socket"):
        StatusServer(regular, lambda: {}).start()
    assert regular.read_text() == "keep me"
    with pytest.raises(StatusSocketError, match="too long for a UNIX socket"):
        StatusServer(tmp_path / ("x" * 120), lambda: {}).start()


def test_status_falls_back_to_the_outbox_when_the_service_is_not_running(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from tests.mqtt_helpers import free_port
    state = tmp_path / "state"
    agent = run_agent(service_config(free_port()), state)  # no broker: everything stays in the outbox
    try:
        assert wait(lambda: agent.outbox.depth >= 10)
    finally:
        agent.stop(drain_s=0.1)
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[agent]\nid = "svc"\n[[sensors]]\nname = "temp"\ndriver = "emulated.temperature"\n')
    code = main(["status", "--config", str(cfg), "--state-dir", str(state), "--socket", str(tmp_path / "no.sock"),
                 "--json"])
    assert code == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"] == "outbox" and doc["outbox"]["depth"] == agent.outbox.depth
    assert doc["link"]["state"].startswith("unknown")
    assert _temp(doc)["streams"]["temp"]["last"]["quality"] == "good"
    assert "vib" in doc["other_streams"]  # in the outbox, not in this config
    assert main(["status", "--config", str(cfg), "--state-dir", str(state), "--socket", str(tmp_path / "no.sock")]) == 3
    assert "NOT RUNNING" in capsys.readouterr().out


def test_status_without_service_or_outbox_says_where_it_looked(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "--state-dir", str(tmp_path / "nothing"), "--socket", str(tmp_path / "no.sock")])
    assert code == 1
    assert f"no outbox at {tmp_path / 'nothing' / 'outbox.db'}" in capsys.readouterr().err


def test_acquisition_rate_from_the_readers_counters(running) -> None:
    """When the pipeline counts what each reader acquires (`samples.<sensor>`, `reads.<sensor>`), status reports
    that rate; without the counter it says nothing rather than guessing."""
    agent, service, path = running
    for _ in range(3):
        agent.stats.inc("reads.temp", 10)
        service.tick()
    doc = read_status(path)
    temp = _temp(doc)
    assert temp["acquisition_hz"] > 0 and temp["expected_acquisition_hz"] == 10.0
    vib = next(s for s in doc["sensors"] if s["name"] == "vib")
    assert vib["expected_acquisition_hz"] == 1000.0
    if "samples.vib" not in agent.stats.snapshot():
        assert vib["acquisition_hz"] is None


def test_a_full_outbox_shows_as_drops_and_gap_events(tmp_path: Path) -> None:
    from tests.mqtt_helpers import free_port
    cfg = service_config(free_port(), outbox={"commit_interval_ms": 50, "max_mb": 0.01})  # no broker, a tiny bound
    agent = run_agent(cfg, tmp_path / "state")
    service = Service(agent, status_socket=tmp_path / "status.sock", environ={})
    service.ready()
    try:
        assert wait(lambda: read_status(tmp_path / "status.sock")["gaps"]["outbox_gap_events"] > 0, 60)
        doc = read_status(tmp_path / "status.sock")
    finally:
        service.stopping()
        agent.stop(drain_s=0.1)
    assert doc["drops"]["outbox_dropped_oldest"] > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_status_watch_refreshes_until_ctrl_c(tmp_path: Path) -> None:
    """`status --watch` asks the socket again every interval and leaves cleanly on Ctrl-C (SIGINT)."""
    import signal
    import subprocess
    import sys
    import threading
    served = []
    changed = threading.Event()

    def document() -> dict:
        served.append(1)
        if len(served) >= 3:
            changed.set()
        return {"source": "service", "agent": "watched", "uptime_s": float(len(served)), "pid": 1, "version": "x",
                "started": "2026-01-01T00:00:00.000Z", "link": {"state": "up", "broker": "mqtt://b:1883"},
                "outbox": {"depth": len(served), "oldest_age_s": 0.0, "bytes": 4096},
                "sensors": [{"name": "temp", "kind": "slow", "rate_hz": 1.0, "expected_rate_hz": 1.0, "errors": 0,
                             "dropped": 0, "streams": {"temp": {"kind": "reading", "age_s": 0.5, "rate_hz": 1.0,
                                                                "last": {"value": 41.5, "unit": "degC",
                                                                         "quality": "good"}}}}]}

    path = tmp_path / "status.sock"
    server = StatusServer(path, document)
    server.start()
    proc = subprocess.Popen([sys.executable, "-m", "agent", "status", "--watch", "--interval", "0.2", "--socket",
                             str(path), "--state-dir", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # bounds on a hang, not on speed: on a busy machine starting Python and importing rich can take minutes
        assert changed.wait(600), "status --watch did not ask again"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert proc.returncode == 0, err
    assert "edge-agent watched" in out and "41.5 degC" in out
