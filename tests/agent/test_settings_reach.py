"""Every documented key reaches the code that uses it (issue 17: `mqtt.live_share` was validated and documented, and
the uplink always used 0.5).

For each key of the agent's own sections (`agent`, `mqtt`, `sparkplug`, `commands`, `outbox`) and each generic key
of a `[[sensors]]` table, a config file sets it to a valid value that is neither its default nor the base config's;
the objects are built the way `edge-agent run` builds them (`agent.config.load` of the file,
`agent.cli.common.resolve_state_dir`, then `agent.pipeline.Pipeline(config, state_dir, config_path=...)` and
`start()`, as `agent.app.run` does); and a probe checks what the object that uses the key did with it. A probe
never reads the value back from the config objects: it looks on the wire (a real Mosquitto and its connection
log), at the state of the user (paho's client, the outbox's SQLite connection, a driver, a windower), or at its
behaviour (a command refused, records committed or dropped). Keys that need others to mean anything (`cert_file`
needs `ca_file`, `sparkplug.*` needs `mqtt.format = "sparkplug"`) set those too; the probe still fails when the key
under test stops reaching its user.

`test_every_key_has_a_probe` fails when a key is added to the schema without a probe here, and the docs tests when
a key is missing from README's configuration table (or the table names a key the schema does not have).
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from agent.cli.common import resolve_state_dir
from agent.config import (AgentSection, CommandsConfig, MqttConfig, OutboxConfig, SensorConfig, SparkplugConfig,
                          load, options)
from agent.outbox import DB_NAME
from agent.pipeline import Pipeline
from agent.records import Emit
from hal.clock import ManualClock
from tests.agent_helpers import wait
from tests.mqtt_helpers import Message, MosquittoBroker, Subscriber, free_port
from tests.agent.test_config_fuzz import to_toml
from tests.agent.test_uplink_security import _password_file, pki  # noqa: F401  (pki: a fixture, used by the TLS probes)
from tests.paths import ROOT

SECTIONS = {"agent": AgentSection, "mqtt": MqttConfig, "sparkplug": SparkplugConfig, "commands": CommandsConfig,
            "outbox": OutboxConfig, "sensors": SensorConfig}
USER, PASSWORD = "reach-user", "reach-secret"
AGENT = "reach"


def schema_keys() -> list[str]:
    return [f"{section}.{o.name}" for section, cls in SECTIONS.items() for o in options(cls)]


def base(state_dir: Path, url: str) -> dict[str, Any]:
    return {
        "agent": {"id": AGENT, "state_dir": str(state_dir)},
        "mqtt": {"url": url, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "outbox": {"commit_interval_ms": 20},
        "sensors": [{"name": "temp", "driver": "emulated.temperature", "interval_s": 0.1}],
    }


def _set(doc: dict[str, Any], key: str, value: Any) -> None:
    section, name = key.split(".", 1)
    if section == "sensors":
        doc["sensors"][0][name] = value
    else:
        doc.setdefault(section, {})[name] = value


# -- the brokers -----------------------------------------------------------------------------------------------------

class Capture(Subscriber):
    """A subscriber (QoS 1) that also keeps each message's QoS."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.qos: list[tuple[str, int]] = []
        super().__init__(*args, **kwargs)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        super()._on_message(client, userdata, msg)
        with self._lock:
            self.qos.append((msg.topic, msg.qos))

    def topics(self) -> list[str]:
        return [m.topic for m in self.snapshot()]

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.snapshot() if m.topic == topic]

    def data(self) -> list[Message]:
        return [m for m in self.snapshot() if "/status" not in m.topic and "/cmd" not in m.topic]


@dataclass
class Site:
    """A broker for one probe: plain, with passwords, or with TLS listeners (`tls`: listener name -> port)."""

    broker: MosquittoBroker
    sub: Capture
    tls: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.broker.url

    def log(self) -> str:
        return self.broker.log.read_text(errors="replace")


def _site(tmp: Path, kind: str, pki_dir: Path | None) -> Site:
    extra, tls = "log_type all\n", {}
    password_file = _password_file(tmp, USER, PASSWORD) if kind == "auth" else None
    if kind == "tls":
        assert pki_dir is not None
        for name, (cert, require) in {"ca": ("server", False), "client": ("server", True),
                                      "wrong_host": ("wrong-host", False)}.items():
            tls[name] = free_port()
            extra += (f"listener {tls[name]} 127.0.0.1\ncafile {pki_dir}/ca.crt\ncertfile {pki_dir}/{cert}.crt\n"
                      f"keyfile {pki_dir}/{cert}.key\nrequire_certificate {'true' if require else 'false'}\n")
    broker = MosquittoBroker(tmp, extra_conf=extra, password_file=password_file, persistent=kind == "restart").start()
    try:
        sub = Capture(broker.port, "#", client_id="reach-observer", persistent=kind == "restart",
                      **({"username": USER, "password": PASSWORD} if kind == "auth" else {}))
    except Exception:
        broker.stop()
        raise
    return Site(broker, sub, tls)


# -- one run ---------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """A config file with the key set, and the application's objects built from it as `edge-agent run` does."""

    tmp: Path
    doc: dict[str, Any]
    site: Site | None
    clock: Any = None

    def __post_init__(self) -> None:
        self.path = self.tmp / "agent.toml"
        self.path.write_text(to_toml(self.doc), encoding="utf-8")
        self.config = load(self.path, emulate=True)  # the file, as `edge-agent run -c FILE --emulate` loads it
        self.state_dir = resolve_state_dir(None, self.config)  # as `agent.cli.run` resolves it
        self.pipeline = Pipeline(self.config, self.state_dir, config_path=str(self.path), clock=self.clock)
        self.started = False

    def start(self) -> Run:
        self.pipeline.start()
        self.started = True
        return self

    @property
    def stats(self) -> Any:
        return self.pipeline.stats

    def client(self) -> mqtt.Client:
        """The uplink's paho client (the user of the connection settings)."""
        return self.pipeline.uplink._client

    def status(self, topic: str = f"edge/{AGENT}/status") -> dict[str, Any]:
        assert self.site is not None
        assert self.site.sub.wait_for(lambda s: any(m.topic == topic for m in s.snapshot()), 30), (
            f"no status on {topic}; topics seen: {sorted(set(self.site.sub.topics()))}")
        return self.site.sub.on(topic)[0].json()

    def command(self, name: str, body: dict[str, Any] | bytes) -> dict[str, Any]:
        """Publish a command (after the agent is online) and return its response."""
        assert self.site is not None
        self.status()
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        cid = json.loads(payload).get("id") if payload.startswith(b"{") else None
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="reach-commander")
        pub.connect("127.0.0.1", self.site.broker.port)
        pub.loop_start()
        topic = f"edge/{AGENT}/cmd-response"
        try:
            seen = len(self.site.sub.on(topic))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the agent subscribes to its cmd topic after its birth: resend
                pub.publish(f"edge/{AGENT}/cmd/{name}", payload, qos=1).wait_for_publish(10)
                if self.site.sub.wait_for(lambda s: len(s.on(topic)) > seen, 2):
                    break
        finally:
            pub.disconnect()
            pub.loop_stop()
        responses = [m.json() for m in self.site.sub.on(topic)]
        assert responses, f"no response to {name}"
        return next((r for r in responses if cid is None or r.get("id") == cid), responses[-1])

    def stop(self) -> None:
        if self.started:
            self.pipeline.stop(drain_s=0.2)
        else:  # constructed only: close what the constructor opened
            self.pipeline.context.close()


# -- the probes: what the user of each key did with it ---------------------------------------------------------------

@dataclass
class Probe:
    value: Any
    check: Callable[[Run], None]
    site: str = ""  # "", "plain", "auth", "tls", "restart": the broker the probe needs
    extra: dict[str, Any] = field(default_factory=dict)  # other keys it needs to mean anything
    clock: Callable[[], Any] | None = None


def _probe_state_dir(run: Run) -> None:
    run.start()
    assert run.pipeline.outbox.flush(20)
    assert (Path(run.config.agent.state_dir or "") / DB_NAME).is_file(), "the outbox is not in agent.state_dir"
    assert run.state_dir == Path(run.doc["agent"]["state_dir"])


def _log_has(pattern: str) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        run.start().status()
        assert run.site is not None
        assert wait(lambda: re.search(pattern, run.site.log()), 20), (
            f"broker log has no {pattern!r}: {run.site.log()[-1500:]}")
    return check


def _connects(run: Run) -> None:
    run.start().status()


def _reconnect_min(run: Run) -> None:
    run.start()
    assert wait(lambda: run.stats.get("uplink_connect_failures") >= 1, 20)
    time.sleep(3.0)  # the first back-off waits 15 to 30 s (equal jitter); the base config's 0.1 s would retry
    assert run.stats.get("uplink_connect_failures") == 1


def _reconnect_max(caplog: pytest.LogCaptureFixture) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        with caplog.at_level(logging.WARNING, logger="edge_agent.uplink"):
            run.start()
            assert wait(lambda: "back-off up to 45 s" in caplog.text, 20), caplog.text
    return check


def _batched(run: Run) -> None:
    """A backlog (the broker down for a while) goes out as arrays of at most 5 records of one stream."""
    assert run.site is not None
    run.start().status()
    run.site.broker.stop()
    assert wait(lambda: run.pipeline.outbox.depth >= 15, 30)
    run.site.broker.start()
    assert run.site.sub.wait_for(lambda s: any(m.payload.startswith(b"[") for m in s.data()), 30), (
        "no batch arrived")
    sizes = [len(m.json()) for m in run.site.sub.data() if m.payload.startswith(b"[")]
    assert max(sizes) == 5 and all(2 <= n <= 5 for n in sizes), sizes


def _grouped(run: Run) -> None:
    run.start()
    assert run.site is not None
    topic = f"edge/{AGENT}/readings/temp"
    assert run.site.sub.wait_for(lambda s: bool(s.on(topic)), 30), sorted(set(run.site.sub.topics()))


def _deflated(run: Run) -> None:
    run.start()
    assert run.site is not None
    assert run.site.sub.wait_for(lambda s: any(m.payload[:1] == b"x" for m in s.data()), 30), (
        [m.payload[:20] for m in run.site.sub.data()[:5]])
    body = next(m.payload for m in run.site.sub.data() if m.payload[:1] == b"x")
    assert json.loads(zlib.decompress(body))["agent"] == AGENT


def _sparkplug_topic(topic: str) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        run.start()
        assert run.site is not None
        assert run.site.sub.wait_for(lambda s: topic in s.topics(), 30), sorted(set(run.site.sub.topics()))
    return check


def _primary_host(run: Run) -> None:
    """The node subscribes to its primary host's STATE and is born only once that host is online."""
    assert run.site is not None
    run.start()
    assert wait(lambda: "spBv1.0/STATE/scada1" in run.site.log(), 30), run.site.log()[-1500:]
    assert not any("NBIRTH" in t for t in run.site.sub.topics()), "born before the primary host was online"
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scada1")
    pub.connect("127.0.0.1", run.site.broker.port)
    pub.loop_start()
    try:
        pub.publish("spBv1.0/STATE/scada1", json.dumps({"online": True, "timestamp": int(time.time() * 1000)}),
                    qos=1, retain=True).wait_for_publish(10)
        assert run.site.sub.wait_for(lambda s: any("NBIRTH" in t for t in s.topics()), 30)
    finally:
        pub.disconnect()
        pub.loop_stop()


def _data_qos(run: Run) -> None:
    run.start()
    assert run.site is not None
    sub = run.site.sub
    assert sub.wait_for(lambda s: any("/DDATA/" in t for t, _ in s.qos), 30), sorted(set(sub.topics()))
    assert {q for t, q in sub.qos if "/NBIRTH/" in t or "/DDATA/" in t} == {1}, sub.qos[:10]


def _command(name: str, body: dict[str, Any] | bytes, code: str | None) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        response = run.start().command(name, body)
        if code is None:
            assert response["ok"] is True, response
        else:
            assert response["ok"] is False and response["error"]["code"] == code, response
    return check


def _commits_at_most(run: Run) -> None:
    """3 records make a group commit although the interval (60 s) is far away."""
    run.start()
    assert wait(lambda: run.pipeline.outbox.depth >= 3, 20), run.pipeline.outbox.depth


def _commits_late(run: Run) -> None:
    run.start()
    assert wait(lambda: run.stats.get("reads.temp") >= 5, 20)
    time.sleep(1.0)  # the base config commits every 20 ms
    assert run.pipeline.outbox.depth == 0, "records were committed before the 60 s group-commit window"


def _synchronous(run: Run) -> None:
    run.start()
    conn = run.pipeline.outbox._conn
    assert conn is not None
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def _fill(run: Run, n: int, ts_ns: int | None = None) -> None:
    now = time.time_ns()
    emits = [Emit("reading", "filler", ts_ns or now + i, {"value": i, "pad": "x" * 200}) for i in range(n)]
    for i in range(0, n, 200):
        run.pipeline.outbox.put_many(emits[i:i + 200])
        assert run.pipeline.outbox.flush(30)


def _dropped(counter: str) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        run.start()
        _fill(run, 2000)  # ~0.5 MB: far past 0.1 MB
        assert wait(lambda: run.stats.get(counter) > 0, 30), run.stats.snapshot()
    return check


def _expired(run: Run) -> None:
    run.start()
    _fill(run, 1, ts_ns=time.time_ns() - 3600 * 10**9)  # an hour old: past 0.01 h
    _fill(run, 1)  # a later commit applies the bound
    assert wait(lambda: run.stats.get("outbox_dropped_expired") >= 1, 30), run.stats.snapshot()


def _free_floor(caplog: pytest.LogCaptureFixture) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        with caplog.at_level(logging.WARNING):
            run.start()
            assert wait(lambda: "outbox.min_free_mb = 1e+09 MB is more than a quarter" in caplog.text, 20), (
                caplog.text)
    return check


def _reads(name: str) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        run.start()
        assert wait(lambda: run.stats.get(f"reads.{name}") >= 1, 20), run.stats.snapshot()
    return check


def _reader(check_source: Callable[[Any], bool]) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        assert len(run.pipeline.readers) == 1
        source = run.pipeline.readers[0].source
        assert check_source(source), source
    return check


def _read_in_a_process(run: Run) -> None:
    """A stream sensor read by a process of its own (an emulated one is read in a thread by default): its blocks
    arrive, and the reader says where it runs."""
    run.start()
    assert wait(lambda: run.stats.get("samples.temp") >= 1000, 120), run.stats.snapshot()
    assert str(run.stats.get("reader_scheduling.temp", "")).startswith("process, "), run.stats.snapshot()


def _windower(attr: str, value: int) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        assert getattr(run.pipeline.processors["temp"].windower, attr) == value
    return check


def _polled_every_7s(run: Run) -> None:
    """Plant time stepped by hand: one poll at start, the next after 7 s, not after 1 s (the default)."""
    clock = run.clock
    run.start()
    assert wait(lambda: run.stats.get("reads.temp") >= 1 and clock.parked() >= 1, 30)
    clock.advance(6.5)
    assert run.stats.get("reads.temp") == 1
    clock.advance(1.0)
    assert wait(lambda: run.stats.get("reads.temp") == 2, 10), run.stats.get("reads.temp")


def _features(run: Run) -> None:
    assert run.pipeline.processors["temp"].settings["deadband"] == 0.5


def _disabled(run: Run) -> None:
    assert [r.sensor.name for r in run.pipeline.readers] == ["other"]


SPARKPLUG = {"mqtt.format": "sparkplug", "sparkplug.group_id": "G1"}
VIBRATION = {"sensors.driver": "emulated.vibration", "sensors.rate_hz": 1000, "sensors.block_size": 125,
             "sensors.axes": ["x"]}
COMMANDS = {"commands.enabled": True}
BME280 = {"buses": {"i2c1": {"type": "i2c", "bus": 1}}, "sensors.driver": "bme280", "sensors.address": 0x76,
          "sensors.bus": "i2c1"}  # three channels: temp.temperature, temp.humidity, temp.pressure
SPARE_PORT = free_port()  # nothing listens there


def probes(tmp: Path, pki_dir: Path | None, caplog: pytest.LogCaptureFixture) -> dict[str, Probe]:
    password_file = tmp / "mqtt-password"
    password_file.write_text(PASSWORD + "\n")
    tls = ({"mqtt.ca_file": str(pki_dir / "ca.crt")} if pki_dir else {})
    client_cert = ({"mqtt.cert_file": str(pki_dir / "client.crt"), "mqtt.key_file": str(pki_dir / "client.key")}
                   if pki_dir else {})
    return {
        "agent.id": Probe("press-7", lambda r: _check_status(r, "edge/press-7/status", "press-7"), "plain"),
        "agent.state_dir": Probe(str(tmp / "elsewhere"), _probe_state_dir),
        "mqtt.url": Probe("<site>", _connects, "plain"),
        "mqtt.prefix": Probe("plant3", lambda r: _check_status(r, f"plant3/{AGENT}/status", AGENT), "plain"),
        "mqtt.client_id": Probe("reach-client-9", _log_has(r" as reach-client-9 \("), "plain"),
        "mqtt.keepalive_s": Probe(17, _log_has(r" as edge-agent-reach \(p\d, c\d, k17"), "plain"),
        "mqtt.inflight": Probe(7, lambda r: _equal(r.client().max_inflight_messages, 7)),
        "mqtt.reconnect_min_s": Probe(30.0, _reconnect_min, extra={"mqtt.reconnect_max_s": 60.0}),
        "mqtt.reconnect_max_s": Probe(45.0, _reconnect_max(caplog)),
        "mqtt.connect_timeout_s": Probe(3.5, lambda r: _equal(r.client().connect_timeout, 3.5)),
        "mqtt.protocol": Probe("5", _log_has(r" as edge-agent-reach \(p5, "), "plain"),
        "mqtt.username": Probe(USER, _log_has(rf" as edge-agent-reach \(p\d, c\d, k\d+, u'{USER}'\)"), "plain"),
        "mqtt.password": Probe(PASSWORD, _connects, "auth", {"mqtt.username": USER}),
        "mqtt.password_file": Probe(str(password_file), _connects, "auth", {"mqtt.username": USER}),
        "mqtt.password_env": Probe("REACH_MQTT_PASSWORD", _connects, "auth", {"mqtt.username": USER}),
        "mqtt.ca_file": Probe(tls.get("mqtt.ca_file"), _connects, "tls", {"mqtt.url": "<tls:ca>"}),
        "mqtt.cert_file": Probe(client_cert.get("mqtt.cert_file"), _connects, "tls",
                                {**tls, **client_cert, "mqtt.url": "<tls:client>"}),
        "mqtt.key_file": Probe(client_cert.get("mqtt.key_file"), _connects, "tls",
                               {**tls, **client_cert, "mqtt.url": "<tls:client>"}),
        "mqtt.tls_insecure": Probe(True, _connects, "tls", {**tls, "mqtt.url": "<tls:wrong_host>"}),
        "mqtt.batch": Probe(5, _batched, "restart"),
        "mqtt.live_share": Probe(0.2, lambda r: _equal(r.pipeline.uplink.live_share, 0.2)),
        "mqtt.format": Probe("sparkplug", _sparkplug_topic(f"spBv1.0/G1/NBIRTH/{AGENT}"), "plain",
                             {"sparkplug.group_id": "G1"}),
        "mqtt.group": Probe("sensor", _grouped, "plain", BME280),
        # a reading's body is ~120 bytes: below the default threshold (128), deflated only with a lower one
        "mqtt.compress": Probe("deflate", _deflated, "plain", {"mqtt.compress_min_bytes": 16}),
        "mqtt.compress_min_bytes": Probe(16, _deflated, "plain", {"mqtt.compress": "deflate"}),
        "sparkplug.group_id": Probe("Line2", _sparkplug_topic(f"spBv1.0/Line2/NBIRTH/{AGENT}"), "plain",
                                    {"mqtt.format": "sparkplug"}),
        "sparkplug.edge_node_id": Probe("node-9", _sparkplug_topic("spBv1.0/G1/NBIRTH/node-9"), "plain", SPARKPLUG),
        "sparkplug.primary_host_id": Probe("scada1", _primary_host, "plain", SPARKPLUG),
        "sparkplug.data_qos": Probe(1, _data_qos, "plain", SPARKPLUG),
        "commands.enabled": Probe(True, _command("ping", {"id": "p1"}, None), "plain"),
        "commands.allow": Probe(["ping"], _command("reload", {"id": "r1"}, "not_allowed"), "plain", COMMANDS),
        "commands.max_bytes": Probe(64, _command("ping", {"id": "p2", "pad": "x" * 100}, "too_large"), "plain",
                                    COMMANDS),
        "commands.capture_max_s": Probe(2.0, _command("capture", {"id": "c1", "sensor": "temp", "seconds": 5},
                                                      "out_of_range"), "plain", COMMANDS),
        "outbox.commit_interval_ms": Probe(60000, _commits_late),
        "outbox.commit_max_records": Probe(3, _commits_at_most, extra={"outbox.commit_interval_ms": 60000}),
        "outbox.synchronous": Probe("normal", _synchronous),
        "outbox.max_mb": Probe(0.1, _dropped("outbox_dropped_oldest")),
        "outbox.max_age_h": Probe(0.01, _expired),
        "outbox.policy": Probe("drop_newest", _dropped("outbox_dropped_newest"), extra={"outbox.max_mb": 0.1}),
        "outbox.min_free_mb": Probe(1e9, _free_floor(caplog)),
        "sensors.name": Probe("boiler", _reads("boiler")),
        "sensors.driver": Probe("emulated.vibration", _reader(lambda s: type(s).__name__ == "EmulatedVibration"),
                                extra={k: v for k, v in VIBRATION.items() if k != "sensors.driver"}),
        "sensors.bus": Probe("i2c1", _reader(lambda s: s.bus_name == "i2c1"),
                             extra={k: v for k, v in BME280.items() if k != "sensors.bus"}),
        "sensors.interval_s": Probe(7.0, _polled_every_7s, clock=lambda: ManualClock()),
        "sensors.window": Probe(512, _windower("size", 512), extra=VIBRATION),
        "sensors.hop": Probe(128, _windower("hop", 128), extra={**VIBRATION, "sensors.window": 512}),
        "sensors.features": Probe({"deadband": 0.5}, _features),
        "sensors.enabled": Probe(False, _disabled,
                                 extra={"sensors+": {"name": "other", "driver": "emulated.temperature"}}),
        "sensors.device": Probe("dev-7", _sparkplug_topic(f"spBv1.0/G1/DBIRTH/{AGENT}/dev-7"), "plain", SPARKPLUG),
        "sensors.acquisition": Probe("process", _read_in_a_process, extra=VIBRATION),
    }


def _equal(found: Any, expected: Any) -> None:
    assert found == expected, f"found {found!r}, expected {expected!r}"


def _check_status(run: Run, topic: str, agent: str) -> None:
    body = run.start().status(topic)
    assert body["agent"] == agent and body["status"] == "online", body


# -- the tests -------------------------------------------------------------------------------------------------------

def test_every_key_has_a_probe(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = set(schema_keys())
    probed = set(probes(tmp_path, None, caplog))
    assert not keys - probed, f"keys without a probe in {Path(__file__).name}: {sorted(keys - probed)}"
    assert not probed - keys, f"probes of keys the schema does not have: {sorted(probed - keys)}"


@pytest.fixture
def pki_if_needed(request: pytest.FixtureRequest) -> Iterator[Path | None]:
    key = request.node.callspec.params["key"]
    yield request.getfixturevalue("pki") if key.startswith(("mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file",
                                                            "mqtt.tls_insecure")) else None


@pytest.mark.slow  # whole pipelines, real brokers
@pytest.mark.parametrize("key", schema_keys())
def test_the_key_reaches_its_user(key: str, tmp_path: Path, pki_if_needed: Path | None,
                                  caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = probes(tmp_path, pki_if_needed, caplog)[key]
    monkeypatch.setenv("REACH_MQTT_PASSWORD", PASSWORD)
    site = _site(tmp_path, probe.site, pki_if_needed) if probe.site else None
    try:
        # the base config's broker; for mqtt.url itself a port nobody listens on, so only the key finds the broker
        url = site.url if site and key != "mqtt.url" else f"mqtt://127.0.0.1:{SPARE_PORT}"
        doc = base(tmp_path / "state", url)
        section, name = key.split(".", 1)
        before = dict(doc.get(section, {})) if section != "sensors" else dict(doc["sensors"][0])
        for k, v in {**probe.extra, key: probe.value}.items():
            if k == "buses":
                doc["buses"] = v
            elif k == "sensors+":
                doc["sensors"].append(v)
            else:
                if isinstance(v, str) and v.startswith("<tls:"):
                    assert site is not None
                    v = f"mqtt://localhost:{site.tls[v[5:-1]]}"
                elif v == "<site>":
                    assert site is not None
                    v = site.url
                _set(doc, k, v)
        default = next(o.default for o in options(SECTIONS[section]) if o.name == name)
        value = doc["sensors"][0][name] if section == "sensors" else doc[section][name]
        assert value != default and value != before.get(name, default), f"{key}: {value!r} is not a change"
        run = Run(tmp_path, doc, site, probe.clock() if probe.clock else None)
        try:
            probe.check(run)
        finally:
            run.stop()
    finally:
        if site is not None:
            site.sub.close()
            site.broker.stop()


# -- the docs --------------------------------------------------------------------------------------------------------

def documented_keys() -> set[str]:
    """Keys in README's configuration table: `section.key` (and `key` after a `/` in the same cell), and the keys a
    `[[sensors]]` row lists."""
    keys: set[str] = set()
    table = False
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| key | default | meaning |"):
            table = True
            continue
        if table and not line.startswith("|"):
            break
        if not table or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        if cells[0] == "`[[sensors]]`":
            listed = re.findall(r"`([a-z_]+)`", cells[2].split("every other key")[0])
            keys.update(f"sensors.{k}" for k in listed)
            continue
        section = ""
        for n in names:
            if "." in n and not n.startswith("["):
                section, _, k = n.partition(".")
                keys.add(f"{section}.{k}")
            elif section and re.fullmatch(r"[a-z_]+", n):
                keys.add(f"{section}.{n}")
    return keys


def test_every_key_is_documented_and_every_documented_key_exists() -> None:
    documented, schema = documented_keys(), set(schema_keys())
    assert not schema - documented, f"keys missing from README's configuration table: {sorted(schema - documented)}"
    assert not documented - schema, f"README documents keys the schema does not have: {sorted(documented - schema)}"


def test_the_starter_config_uses_only_schema_keys() -> None:
    """systemd/agent.toml.starter (written by install.sh) sets or comments out only keys that exist."""
    keys = set(schema_keys())
    section = ""
    for line in (ROOT / "systemd" / "agent.toml.starter").read_text(encoding="utf-8").splitlines():
        text = line.lstrip("# ").strip()
        if m := re.fullmatch(r"\[\[?([a-z_.0-9]+)\]\]?", text):
            section = m.group(1)
            continue
        if section in ("agent", "mqtt", "outbox", "commands", "sparkplug") and (m := re.match(r"([a-z_]+) =", text)):
            assert f"{section}.{m.group(1)}" in keys, line


def test_generated_schema_keeps_defaults_in_one_place() -> None:
    """The typed config's defaults are the schema's: a config without the sections equals the dataclasses'
    defaults (nothing re-declared on the way)."""
    from agent.config import parse
    config = parse({"agent": {"id": AGENT}}, "<t>")
    for section, cls in SECTIONS.items():
        if cls in (SensorConfig, AgentSection):
            continue
        assert getattr(config, section) == cls(), section
    assert config.agent == AgentSection(id=AGENT)
