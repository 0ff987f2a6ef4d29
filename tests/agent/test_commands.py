"""Downlink commands against a real broker: every malformed or unauthorised command gets an error response and an
audit line, none stops the agent from publishing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import load
from agent.pipeline import Pipeline
from tests.agent_helpers import wait

pytestmark = pytest.mark.slow  # whole agents answering commands through a broker

CONFIG = """
[agent]
id = "c1"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
[commands]
enabled = true
allow = {allow}
max_bytes = 512
capture_max_s = 2
[[sensors]]
name = "vib"
driver = "emulated.vibration"
rate_hz = 1000
block_size = 100
axes = ["x", "y"]
window = 500
[[sensors]]
name = "temp"
driver = "emulated.temperature"
interval_s = 0.1
"""


class Console:
    """A remote operator: publishes commands and collects responses (real paho client)."""

    def __init__(self, port: int) -> None:
        self.responses: list[dict] = []
        self.records: list[dict] = []
        ready = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([("edge/c1/cmd-response", 1), ("edge/c1/+/+", 1)])
        self.c.on_subscribe = lambda *a: ready.append(1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert wait(lambda: ready, 10)

    def _on_message(self, c, u, msg) -> None:
        if msg.topic.endswith("cmd-response"):
            self.responses.append(json.loads(msg.payload))
        elif "/cmd/" not in msg.topic:
            self.records.append({"topic": msg.topic, **json.loads(msg.payload)})

    def send(self, name: str, body: bytes | dict, cid=None, timeout: float = 15.0) -> dict | None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        n = len(self.responses)
        self.c.publish(f"edge/c1/cmd/{name}", payload, qos=1)
        wait(lambda: len(self.responses) > n, timeout)
        return self.responses[n] if len(self.responses) > n else None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def setup(broker, tmp_path: Path):
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(port=broker.port, allow='["ping", "capture", "set", "reload"]'))
    agent = Pipeline(load(path, emulate=True), tmp_path / "state", config_path=str(path))
    agent.start()
    assert wait(lambda: agent.stats.get("link") == "up")
    console = Console(broker.port)
    assert wait(lambda: agent.stats.get("uplink_subscriptions") >= 1)  # the broker acknowledged the cmd topic
    yield agent, console, path
    console.close()
    agent.stop()


def test_ping(setup) -> None:
    agent, console, _ = setup
    r = console.send("ping", {"id": "p-1"})
    assert r is not None and r["ok"] and r["id"] == "p-1" and r["command"] == "ping"
    assert r["result"]["pong"] is True and r["result"]["uptime_s"] > 0


@pytest.mark.parametrize("name,body,code", [
    ("explode", {"id": 1}, "unknown_command"),
    ("ping", b"{not json", "malformed"),
    ("ping", b"\xff\xfe", "malformed"),
    ("ping", b"[1, 2]", "malformed"),
    ("ping", {"no_id": True}, "malformed"),
    ("ping", {"id": True}, "malformed"),
    ("ping", {"id": "x" * 200}, "malformed"),
    ("ping", {"id": 3, "pad": "x" * 600}, "too_large"),
    ("capture", {"id": 4, "sensor": "temp", "seconds": 1}, "bad_argument"),
    ("capture", {"id": 5, "sensor": "nope"}, "bad_argument"),
    ("capture", {"id": 6, "sensor": "vib", "seconds": 60}, "out_of_range"),
    ("capture", {"id": 7, "sensor": "vib", "seconds": -1}, "out_of_range"),
    ("capture", {"id": 8, "sensor": "vib", "seconds": "1"}, "out_of_range"),
    ("set", {"id": 9, "target": "temp", "value": 1}, "not_writable"),
    ("set", {"id": 10, "target": "nothing.here", "value": 1}, "bad_argument"),
    ("set", {"id": 11, "target": "temp"}, "bad_argument"),
])
def test_bad_commands_get_error_responses_and_the_agent_keeps_publishing(setup, name, body, code) -> None:
    agent, console, _ = setup
    r = console.send(name, body)
    assert r is not None, "every command is answered"
    assert r["ok"] is False and r["error"]["code"] == code, r
    assert r["error"]["message"]
    n = len(console.records)
    assert wait(lambda: len(console.records) > n + 2), "the agent keeps publishing"
    assert agent.stats.get("commands_rejected") >= 1


def test_capture_uploads_the_raw_window_through_the_outbox(setup) -> None:
    agent, console, _ = setup
    r = console.send("capture", {"id": "cap", "sensor": "vib", "seconds": 0.5})
    assert r is not None and r["ok"], r
    assert r["result"] == {"stream": "vib.capture", "samples": 500, "rate_hz": 1000.0}
    assert wait(lambda: any(rec["stream"] == "vib.capture" for rec in console.records))
    rec = next(rec for rec in console.records if rec["stream"] == "vib.capture")
    assert rec["topic"] == "edge/c1/capture/vib.capture" and rec["seq"] == 0
    assert rec["n"] == 500 and rec["axes"] == ["x", "y"] and rec["encoding"] == "f32le-base64"
    x = np.frombuffer(base64.b64decode(rec["data"]["x"]), "<f4")
    assert x.shape == (500,)
    # the healthy plant's vibration (ISO zone B, about 1.6 mm/s) is a few tenths of a m/s² RMS: a real signal,
    # neither silence nor a unit mistake (g instead of m/s² would be ~10x smaller, mm/s² 1000x larger)
    assert 0.1 < float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) < 2.0


def test_not_allowed_command(broker, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(port=broker.port, allow='["ping"]'))
    agent = Pipeline(load(path, emulate=True), tmp_path / "state", config_path=str(path))
    agent.start()
    console = Console(broker.port)
    try:
        assert wait(lambda: agent.stats.get("link") == "up")
        assert wait(lambda: agent.stats.get("uplink_subscriptions") >= 1)
        r = console.send("reload", {"id": 1})
        assert r is not None and r["error"]["code"] == "not_allowed"
    finally:
        console.close()
        agent.stop()


def test_reload_rejects_a_bad_config_and_keeps_running_then_accepts_a_good_one(setup) -> None:
    agent, console, path = setup
    good = path.read_text()
    path.write_text(good.replace('interval_s = 0.1', 'interval_s = -1'))
    r = console.send("reload", {"id": "r1"})
    assert r is not None and not r["ok"] and r["error"]["code"] == "config_rejected"
    assert "sensors[1].interval_s: expected a positive number, got -1" in r["error"]["message"]
    n = len(console.records)
    assert wait(lambda: len(console.records) > n + 3), "the running configuration keeps working"
    path.write_text(good.replace('name = "temp"', 'name = "temp2"'))
    r = console.send("reload", {"id": "r2"})
    assert r is not None and r["ok"], r
    assert wait(lambda: any(rec["stream"] == "temp2" for rec in console.records))
    assert agent.stats.get("reloads") == 1 and agent.stats.get("reloads_rejected") == 1


def test_commands_disabled_by_default_are_not_even_subscribed(broker, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(port=broker.port, allow='["ping"]').replace("enabled = true", ""))
    agent = Pipeline(load(path, emulate=True), tmp_path / "state", config_path=str(path))
    agent.start()
    console = Console(broker.port)
    try:
        assert wait(lambda: agent.stats.get("link") == "up")
        assert console.send("ping", {"id": 1}, timeout=2) is None
        assert agent.stats.get("commands_received") == 0
    finally:
        console.close()
        agent.stop()


WRITABLE = """
[agent]
id = "c1"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
[commands]
enabled = true
[buses.header]
type = "gpio"
[buses.plc]
type = "modbus_tcp"
host = "192.0.2.1"
[[sensors]]
name = "stack_light"
driver = "gpio.output"
bus = "header"
pin = 5
writable = true
interval_s = 0.2
[[sensors]]
name = "plc"
driver = "modbus"
bus = "plc"
unit = 1
interval_s = 0.2
[[sensors.registers]]
name = "speed_setpoint"
address = 10
scale = 0.1
unit = "Hz"
writable = true
min = 0
max = 60
[[sensors.registers]]
name = "cycle_count"
address = 11
"""


@pytest.fixture
def writable(broker, tmp_path: Path):
    path = tmp_path / "agent.toml"
    path.write_text(WRITABLE.format(port=broker.port))
    agent = Pipeline(load(path, emulate=True), tmp_path / "state", config_path=str(path))
    agent.start()
    assert wait(lambda: agent.stats.get("link") == "up")
    console = Console(broker.port)
    assert wait(lambda: agent.stats.get("uplink_subscriptions") >= 1)
    yield agent, console
    console.close()
    agent.stop()


def test_set_a_gpio_output_is_read_back_and_published(writable) -> None:
    agent, console = writable
    r = console.send("set", {"id": "on", "target": "stack_light", "value": True})
    assert r is not None and r["ok"], r
    assert r["result"] == {"target": "stack_light", "value": True}
    assert wait(lambda: any(rec["stream"] == "stack_light" and rec["value"] is True for rec in console.records))
    r = console.send("set", {"id": "bad", "target": "stack_light", "value": 7})
    assert r is not None and r["error"]["code"] == "out_of_range"


def test_set_a_modbus_register_within_its_limits(writable) -> None:
    agent, console = writable
    r = console.send("set", {"id": "sp", "target": "plc.speed_setpoint", "value": 42.5})
    assert r is not None and r["ok"], r
    assert r["result"]["value"] == pytest.approx(42.5)  # read back from the device (the emulated server)
    assert wait(lambda: any(rec["stream"] == "plc.speed_setpoint" and rec["value"] == pytest.approx(42.5)
                            for rec in console.records))
    for body, code in [({"id": 1, "target": "plc.speed_setpoint", "value": 61}, "out_of_range"),
                       ({"id": 2, "target": "plc.speed_setpoint", "value": "fast"}, "out_of_range"),
                       ({"id": 3, "target": "plc.cycle_count", "value": 1}, "not_writable"),
                       ({"id": 4, "target": "plc.nothing", "value": 1}, "out_of_range"),
                       ({"id": 5, "target": "plc", "value": 1}, "out_of_range")]:
        r = console.send("set", body)
        assert r is not None and not r["ok"] and r["error"]["code"] == code, (body, r)
