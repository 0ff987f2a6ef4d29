"""Sparkplug B 3.0 conformance of the edge node, against a real broker, every message decoded with Eclipse Tahu's
schema (tests/sparkplug_tahu.py: mqtt-spb-wrapper's generated module, not the project's payload code) and checked
in arrival order by `SessionChecker`. Each test names the specification's assertions (tck-id-...) it checks."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests import sparkplug_tahu as tahu

if tahu.Payload is None:
    pytest.skip("the independent Sparkplug schema (mqtt-spb-wrapper, installed by .ci/run)", allow_module_level=True)

from agent.config import parse  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from agent.pipeline import Pipeline  # noqa: E402
from agent.records import Record  # noqa: E402
from agent.uplink import Uplink  # noqa: E402
from hal.types import Quality  # noqa: E402
from tests.agent_helpers import wait  # noqa: E402
from tests.mqtt_helpers import MosquittoBroker, free_port  # noqa: E402
from tests.paths import ROOT

GROUP, NODE = "plant1", "press7"


class Host:
    """A Sparkplug host application: records (topic, payload, qos) of every spBv1.0 message; re-subscribes after a
    broker restart; publishes STATE and NCMD."""

    def __init__(self, port: int) -> None:
        self.msgs: list[tuple[str, bytes, int]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scada-host")
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("spBv1.0/#", qos=1)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_disconnect = lambda *a: self.subscribed.clear()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, c, u, msg) -> None:
        with self._lock:
            self.msgs.append((msg.topic, bytes(msg.payload), msg.qos))

    def snapshot(self) -> list[tuple[str, bytes, int]]:
        with self._lock:
            return list(self.msgs)

    def of(self, kind: str, device: str | None = None) -> list[tuple[str, bytes, int]]:
        return [m for m in self.snapshot() if m[0].split("/")[2] == kind
                and (device is None or m[0].split("/")[-1] == device)]

    def check(self, joined_late: bool = False) -> tahu.SessionChecker:
        """Replay what arrived; `joined_late`: the host subscribed mid-session, so start at the first NBIRTH."""
        checker = tahu.SessionChecker(GROUP, NODE)
        msgs = self.snapshot()
        if joined_late:
            msgs = msgs[next(i for i, m in enumerate(msgs) if m[0].split("/")[2] == "NBIRTH"):]
        for topic, raw, _ in msgs:
            checker.feed(topic, raw)
        return checker

    def state(self, online: bool, ts: int) -> None:
        self.c.publish("spBv1.0/STATE/scada", json.dumps({"online": online, "timestamp": ts}), qos=1, retain=True)

    def ncmd_rebirth(self) -> None:
        p = tahu.Payload()
        p.timestamp = int(time.time() * 1000)
        m = p.metrics.add()
        m.name, m.datatype, m.boolean_value = "Node Control/Rebirth", 11, True
        self.c.publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", p.SerializeToString(), qos=0)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def host(broker):
    h = Host(broker.port)
    yield h
    h.close()


def sensors(temp_interval: float = 0.02) -> list[dict]:
    return [
        {"name": "vib", "driver": "emulated.vibration", "rate_hz": 1000, "block_size": 125, "window": 250,
         "axes": ["x", "y"], "features": {"bands": [[10, 100], [100, 400]], "peaks": 2,
                                          "state": {"off_below": 0.1, "running_above": 0.5}}},
        {"name": "temp", "driver": "emulated.temperature", "interval_s": temp_interval,
         "features": {"aggregate_s": 0.5, "state": {"off_below": 10.0, "running_above": 20.0}}},
    ]


def config(port: int, sensor_list: list[dict] | None = None, **sparkplug):
    return parse({
        "agent": {"id": NODE},
        "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "format": "sparkplug", "reconnect_min_s": 0.1,
                 "reconnect_max_s": 0.5},
        "sparkplug": {"group_id": GROUP, **sparkplug},
        "outbox": {"commit_interval_ms": 20},
        "sensors": sensors() if sensor_list is None else sensor_list,
    }, "<test>", emulate=True)


def decode(raw: bytes):
    return tahu.Payload.FromString(raw)


def dbirth_names(host: Host, device: str) -> set[str]:
    return {m.name for m in decode(host.of("DBIRTH", device)[-1][1]).metrics}


def test_every_dbirth_follows_the_nbirth_and_announces_every_metric_before_any_data(broker, host,
                                                                                   tmp_path: Path) -> None:
    """tck-id-payloads-dbirth-order, tck-id-payloads-ddata-order, tck-id-topics-dbirth-metric-reqs,
    tck-id-topics-dbirth-metrics, tck-id-payloads-alias-birth-requirement, tck-id-payloads-alias-uniqueness,
    tck-id-payloads-alias-data-cmd-requirement, tck-id-payloads-name-birth-data-requirement,
    tck-id-payloads-metric-datatype-not-req, tck-id-payloads-sequence-num-zero-nbirth,
    tck-id-payloads-sequence-num-incrementing, tck-id-payloads-nbirth-rebirth-req, tck-id-payloads-nbirth-bdseq"""
    agent = Pipeline(config(broker.port), tmp_path / "state")
    agent.start()
    try:  # interval statistics (0.5 s), time-in-state reports and events all arrive after the births
        assert wait(lambda: len(host.of("DDATA", "temp")) >= 60 and len(host.of("DDATA", "vib")) >= 8, 60)
    finally:
        agent.stop()
    msgs = host.snapshot()
    kinds = [t.split("/")[2] for t, _, _ in msgs]
    assert kinds[:4] == ["NBIRTH", "DBIRTH", "DBIRTH", "DBIRTH"], kinds[:6]
    assert sorted(t.split("/")[-1] for t, _, _ in msgs[1:4]) == ["agent", "temp", "vib"]
    assert kinds.count("DBIRTH") == 3, "one DBIRTH per device: the metric set never grows within the session"
    checker = host.check()
    assert checker.violations == []
    assert {"value", "stats/mean", "stats/count", "state/availability", "events"} <= dbirth_names(host, "temp")
    vib = dbirth_names(host, "vib")
    assert {"x/rms", "y/kurtosis", "x/bands", "y/peaks", "events", "capture", "state/state"} <= vib
    assert dbirth_names(host, "agent") == {"health", "outbox"}
    # the births carry the units the drivers declare
    temp = {m.name: m for m in decode(host.of("DBIRTH", "temp")[0][1]).metrics}
    assert tahu.properties(temp["value"])["engUnit"] == "degC"
    assert tahu.datatype_name(temp["stats/count"].datatype) == "Int64"
    # every metric that was reported is one of the birth's, by alias (the checker resolved each against it)
    reported = {m.alias for _, raw, _ in host.of("DDATA", "temp") for m in decode(raw).metrics}
    aliases = {m.alias: m.name for m in temp.values()}
    assert {aliases[a] for a in reported} >= {"value", "stats/mean", "stats/count"}
    assert agent.stats.get("sparkplug_undeclared_metrics") == 0


def test_birth_and_data_use_qos_0_by_default_and_qos_1_when_opted_in(broker, host, tmp_path: Path) -> None:
    """tck-id-payloads-nbirth-qos, tck-id-payloads-dbirth-qos, tck-id-payloads-ddata-qos (QoS 0); NDEATH: QoS 1."""
    for qos in (0, 1):
        n = len(host.snapshot())
        extra = {"data_qos": 1} if qos else {}
        agent = Pipeline(config(broker.port, sensors()[1:], **extra), tmp_path / f"state{qos}")
        agent.start()
        try:
            assert wait(lambda: len(host.snapshot()) > n + 20)
        finally:
            agent.stop()
        assert wait(lambda: host.snapshot()[-1][0].split("/")[2] == "NDEATH")
        seen = {(t.split("/")[2], q) for t, _, q in host.snapshot()[n:]}  # the host subscribes with QoS 1
        assert seen == {("NBIRTH", qos), ("DBIRTH", qos), ("DDATA", qos), ("NDEATH", 1)}, seen
        assert agent.outbox.depth == 0, "records sent with QoS 0 leave the outbox once the broker confirmed them"


def test_bdseq_steps_once_per_connect_sent_not_per_refused_attempt(tmp_path: Path) -> None:
    """tck-id-topics-nbirth-bdseq-increment (start at 0, +1 per CONNECT packet), tck-id-payloads-nbirth-bdseq-repeat,
    tck-id-payloads-ndeath-bdseq, tck-id-topics-nbirth-bdseq-matching."""
    port = free_port()
    agent = Pipeline(config(port, sensors()[1:]), tmp_path / "state")
    agent.start()
    broker = None
    try:
        assert wait(lambda: agent.stats.get("uplink_connect_failures") >= 4), "nothing listens: refused attempts"
        assert not (tmp_path / "state" / "sparkplug.json").exists(), "no CONNECT sent: bdSeq not used yet"
        broker = MosquittoBroker(tmp_path, port=port).start()
        assert wait(lambda: agent.stats.get("link") == "up", 30)
        h = Host(port)
        try:
            h.ncmd_rebirth()  # this session's NBIRTH again, for a host that subscribed after it
            assert wait(lambda: h.of("NBIRTH") and h.of("DDATA"))
            agent.stop()
            assert wait(lambda: h.of("NDEATH"))
            nbirth = {m.name: tahu.value_of(m) for m in decode(h.of("NBIRTH")[-1][1]).metrics}
            ndeath = {m.name: tahu.value_of(m) for m in decode(h.of("NDEATH")[-1][1]).metrics}
            assert nbirth["bdSeq"] == ndeath["bdSeq"] == 0
            assert h.check(joined_late=True).violations == []
        finally:
            h.close()
    finally:
        agent.stop()
        if broker is not None:
            broker.stop()
    assert agent.uplink.format.connects_sent == 1
    assert json.loads((tmp_path / "state" / "sparkplug.json").read_text())["bdseq"] == 0


def test_a_reload_with_a_changed_configuration_is_a_full_rebirth(broker, host, tmp_path: Path) -> None:
    """A device added by a reload: NBIRTH (seq 0, same bdSeq) and every DBIRTH before its data
    (tck-id-payloads-dbirth-order, tck-id-payloads-nbirth-bdseq-repeat, tck-id-payloads-sequence-num-zero-nbirth)."""
    path = tmp_path / "agent.toml"

    def write(with_counter: bool) -> None:
        extra = ('[[sensors]]\nname = "parts"\ndriver = "emulated.temperature"\ninterval_s = 0.05\n'
                 if with_counter else "")
        path.write_text(f'[agent]\nid = "{NODE}"\n[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
                        f'format = "sparkplug"\n[sparkplug]\ngroup_id = "{GROUP}"\n'
                        f'[[sensors]]\nname = "temp"\ndriver = "emulated.temperature"\ninterval_s = 0.05\n{extra}')

    write(False)
    from agent.config import load
    agent = Pipeline(load(str(path), emulate=True), tmp_path / "state", config_path=str(path))
    agent.reload_min_interval_s = 0.0  # two reloads in a row (the rate limit has its own test)
    agent.start()
    try:
        assert wait(lambda: len(host.of("DDATA")) >= 5)
        write(True)
        ok, message = agent.reload()
        assert ok, message
        assert wait(lambda: len(host.of("DDATA", "parts")) >= 3)
        ok, message = agent.reload()  # the same file again: nothing changed, nothing to announce
        assert ok, message
        n = len(host.of("DDATA", "parts"))
        assert wait(lambda: len(host.of("DDATA", "parts")) >= n + 3)
    finally:
        agent.stop()
    assert len(host.of("NBIRTH")) == 2
    bd = [{m.name: tahu.value_of(m) for m in decode(raw).metrics}["bdSeq"] for _, raw, _ in host.of("NBIRTH")]
    assert bd[0] == bd[1], "a rebirth keeps the session's bdSeq"
    kinds = [(t.split("/")[2], t.split("/")[-1]) for t, _, _ in host.snapshot()]
    second = kinds.index(("NBIRTH", NODE), 1)
    assert sorted(kinds[second + 1:second + 4]) == [("DBIRTH", "agent"), ("DBIRTH", "parts"), ("DBIRTH", "temp")]
    assert host.check().violations == []


def test_a_device_that_stops_answering_dies_and_is_born_again(broker, host, tmp_path: Path) -> None:
    """tck-id-operational-behavior-device-ddeath; a DBIRTH after data only after that device's DDEATH
    (tck-id-payloads-dbirth-order); tck-id-topics-ddeath-seq-num."""
    agent = Pipeline(config(broker.port, sensors()[1:]), tmp_path / "state")
    agent.start()
    try:
        assert wait(lambda: len(host.of("DDATA", "temp")) >= 5)
        probe = agent.readers[0].source
        probe.fail = True  # the emulated probe stops answering: every read is bad
        assert wait(lambda: host.of("DDEATH", "temp"))
        probe.fail = False
        assert wait(lambda: len(host.of("DBIRTH", "temp")) == 2)
        n = len(host.of("DDATA", "temp"))
        assert wait(lambda: len(host.of("DDATA", "temp")) > n + 3)
    finally:
        agent.stop()
    kinds = [t.split("/")[2] for t, _, _ in host.snapshot() if t.endswith("/temp")]
    death = kinds.index("DDEATH")
    assert "DBIRTH" in kinds[death:] and "DDATA" not in kinds[death:kinds.index("DBIRTH", death)]
    assert len(host.of("DDEATH", "temp")) == 1, "one DDEATH, not one per bad reading"
    assert host.check().violations == []


def test_quality_uses_only_the_allowed_codes(tmp_path: Path) -> None:
    """tck-id-payloads-propertyset-quality-value-type, tck-id-payloads-propertyset-quality-value-value: good 192,
    uncertain 0 (value kept, `edgeAgentQuality` says uncertain), bad 0 with a null value."""
    cfg = config(free_port(), [{"name": "p", "driver": "emulated.temperature", "device": "rig"},
                               {"name": "t", "driver": "emulated.temperature", "device": "rig"}])
    outbox = Outbox(tmp_path / "state", cfg.outbox)
    fmt = Uplink(cfg, outbox).format
    fmt.describe(cfg, {})  # no drivers: each sensor's own stream is its one declared reading
    fmt._birth_messages()

    def reading(quality: Quality, value) -> Record:
        return Record(1, "p", 1, 1_700_000_000_000_000_000, "reading", quality,
                      {"value": value, "unit": "bar"})

    out = {}
    for q, v in ((Quality.UNCERTAIN, 4.2), (Quality.BAD, None), (Quality.GOOD, 4.3)):
        (topic, raw, qos), = fmt.encode([reading(q, v)], False)
        assert topic == f"spBv1.0/{GROUP}/DDATA/{NODE}/rig" and qos == 0
        (m,) = decode(raw).metrics
        out[q.value] = (tahu.value_of(m), tahu.properties(m))
        assert all(v.type == 3 for k, v in zip(m.properties.keys, m.properties.values) if k == "Quality")
    assert out["uncertain"] == (4.2, {"Quality": 0, "edgeAgentQuality": "uncertain"})
    assert out["bad"] == (None, {"Quality": 0})  # one reading of two bad: a null value, the device lives
    assert out["good"] == (4.3, {"Quality": 192})  # back to good: said explicitly once
    outbox.stop()


def test_qos_0_records_stay_in_the_outbox_until_the_broker_confirms_them(tmp_path: Path) -> None:
    """The broker freezes (SIGSTOP) and dies (SIGKILL) while the node publishes with QoS 0: what paho wrote to the
    socket was never read by the broker, yet nothing is lost; it is re-sent as historical after the primary host
    is back (tck-id-operational-behavior-edge-node-birth-sequence-wait)."""
    port = free_port()
    broker = MosquittoBroker(tmp_path, port=port).start()
    h = Host(port)
    agent = Pipeline(config(port, sensors()[1:2], primary_host_id="scada"), tmp_path / "state")
    agent.start()
    try:
        h.state(True, 1)
        assert wait(lambda: len(h.of("DDATA", "temp")) >= 20)
        broker.proc.send_signal(signal.SIGSTOP)
        acked = agent.stats.get("uplink_acked")
        time.sleep(1.5)  # ~75 readings written while nobody reads
        assert agent.stats.get("uplink_acked") <= acked + 1, "nothing confirmed while the broker is frozen"
        broker.proc.kill()
        broker.proc.wait(10)
        broker.proc = None
        broker.start()
        assert h.subscribed.wait(30) and wait(lambda: h.subscribed.is_set(), 30)
        h.state(True, 2)
        assert wait(lambda: len(h.of("NBIRTH")) >= 2, 30)
        assert wait(lambda: agent.stats.get("uplink_published_historical") > 0 and agent.uplink._backlog_end == 0,
                    30)
        time.sleep(0.5)
    finally:
        agent.stop(drain_s=15)
        h.close()
        broker.stop()
    assert agent.outbox.depth == 0
    stamps = set()
    births: dict[int, str] = {}
    for topic, raw, _ in h.snapshot():
        if topic == f"spBv1.0/{GROUP}/DBIRTH/{NODE}/temp":
            births = {m.alias: m.name for m in decode(raw).metrics}
        elif topic == f"spBv1.0/{GROUP}/DDATA/{NODE}/temp":
            stamps |= {m.timestamp for m in decode(raw).metrics if births.get(m.alias) == "value"}
    assert len(stamps) == agent.outbox.next_seq("temp"), "every reading arrived at least once"


def test_the_plant_catalog_comes_from_the_drivers_declarations(tmp_path: Path) -> None:
    """tck-id-topics-dbirth-metric-reqs at the source: what each driver of examples/plant.toml declares (channels,
    units, value types, axes) and what its features produce is in the device's catalog, with the right datatype."""
    from agent.config import load
    from agent.sparkplug import proto
    from agent.sparkplug.metrics import catalog

    cfg = load(str(ROOT / "examples" / "plant.toml"), emulate=True)
    agent = Pipeline(cfg, tmp_path / "state")  # drivers constructed, not opened
    try:
        cat = catalog(cfg, agent._sources())
    finally:
        agent.context.close()
    assert set(cat) == {s.device or s.name for s in cfg.sensors} | {"agent"}
    assert cat["machine_running"]["value"].datatype == proto.BOOLEAN
    assert cat["part_count"]["value"].datatype == proto.INT64 and cat["part_count"]["value"].unit == "count"
    assert {"frequency", "speed"} == set(cat["spindle_speed"])
    assert cat["bearing"]["temperature"].unit == "degC" and len(cat["bearing"]) == 3
    assert {"current", "current/state/state", "current/events"} <= set(cat["motor"])
    assert cat["hydraulics"]["pressure"].unit == "bar"
    assert len(cat["energy"]) == 8 and all(m.reading for m in cat["energy"].values())
    vib = cat["spindle_vibration"]
    assert {f"{a}/velocity_rms" for a in "xyz"} <= set(vib) and vib["x/zone"].datatype == proto.STRING
    assert vib["capture"].datatype == proto.BYTES
