"""Fewer bytes on the wire: `mqtt.group = "sensor"` and `mqtt.compress = "deflate"` (README, "Wire format").

The same records, committed to an outbox and published through a real Mosquitto broker, must decode to exactly the
same bodies (agent, stream, seq, ts, quality, value, unit, error, ...) whether they went one per message, grouped
per sensor poll, or grouped and deflated.
"""

from __future__ import annotations

import json
import threading
import zlib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import parse
from agent.errors import ConfigError
from agent.outbox import Outbox
from agent.records import (CONTENT_TYPE_DEFLATE, GROUPED_KIND, ZLIB_MARK, Emit, Record, encode, expand_grouped,
                           grouped_body, inflate)
from agent.stats import Stats
from agent.uplink import Uplink
from hal.types import Quality
from tests.agent_helpers import wait
from tests.mqtt_helpers import Message

T0 = 1_764_634_542_123_000_000  # ns
POLLS = 6
CHANNELS = [f"reg_{k:02d}" for k in range(10)]


def raw_config(port: int, agent_id: str = "press-7", **mqtt_keys: Any) -> dict[str, Any]:
    return {
        "agent": {"id": agent_id},
        "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, **mqtt_keys},
        "outbox": {"commit_interval_ms": 20},
        "sensors": [{"name": "plc", "driver": "emulated.temperature", "interval_s": 1.0},
                    {"name": "plc.aux", "driver": "emulated.temperature", "interval_s": 1.0}],
    }


def workload() -> list[Emit]:
    """Six polls of a 10-register sensor with the awkward cases: a bad read (error, null value), a register of
    another unit, a register polled every other cycle (its seq falls behind), a counter (delta, total), a NaN; and
    records that are never grouped (an event of the sensor, a reading of no configured sensor, a health record, the
    readings of a sensor whose name extends the other's)."""
    out: list[Emit] = []
    for p in range(POLLS):
        ts = T0 + p * 1_000_000_000
        for k, ch in enumerate(CHANNELS):
            if ch == "reg_09" and p % 2:
                continue  # polled every other cycle
            payload: dict[str, Any] = {"value": round(230.0 + k + p / 8, 4), "unit": "V"}
            quality = Quality.GOOD
            if ch == "reg_03":
                payload["unit"] = "A"
            if ch == "reg_04" and p == 2:
                payload = {"value": None, "unit": "V", "error": "device reported nan"}
                quality = Quality.BAD
            if ch == "reg_05":
                payload.update({"value": 1000 + p, "delta": 1, "total": p})
            if ch == "reg_06" and p == 3:
                payload["value"] = float("nan")
                quality = Quality.UNCERTAIN
            out.append(Emit("reading", f"plc.{ch}", ts, payload, quality))
        out.append(Emit("reading", "plc.aux.flow", ts, {"value": p * 1.5, "unit": "l/min"}))
        out.append(Emit("reading", "ambient", ts, {"value": 21.5, "unit": "degC"}))
        if p == 4:
            out.append(Emit("event", "plc.events", ts, {"event": "state", "state": "running"}))
            out.append(Emit("health", "health", ts, {"cpu_pct": 3.5}))
    return out


class V5Subscriber:
    """An MQTT 5 subscriber keeping each message's content type (the helpers' subscriber speaks 3.1.1)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[Message, str | None]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-sub-v5", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("edge/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(10), "the MQTT 5 subscriber could not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        ctype = getattr(msg.properties, "ContentType", None) if msg.properties is not None else None
        with self._lock:
            self.messages.append((Message(msg.topic, bytes(msg.payload), bool(msg.retain)), ctype))

    def snapshot(self) -> list[Message]:
        with self._lock:
            return [m for m, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def decode(m: Message) -> list[dict[str, Any]]:
    """What a consumer does: inflate a zlib body, expand a grouped one, unpack a batch."""
    body = json.loads(inflate(m.payload, m.topic))
    if m.topic.split("/")[2] == GROUPED_KIND:
        assert body["sensor"] == m.topic.split("/")[3]
        return expand_grouped(body, m.topic)
    return body if isinstance(body, list) else [body]


def publish_through_broker(tmp_path: Path, name: str, port: int, sub: Any, emits: list[Emit],
                           **mqtt_keys: Any) -> tuple[list[Message], Stats]:
    """Commit `emits` to a fresh outbox, then let an uplink publish them all (PUBACKed); the data messages `sub`
    received (none without a subscriber)."""
    cfg = parse(raw_config(port, **mqtt_keys), "<test>", emulate=True)
    stats = Stats()
    outbox = Outbox(tmp_path / name, cfg.outbox, stats)
    outbox.start()
    for e in emits:
        assert outbox.put(e)
    assert outbox.flush(30)
    before = len(sub.snapshot()) if sub is not None else 0
    uplink = Uplink(cfg, outbox, stats)
    uplink.start()
    try:
        assert wait(lambda: outbox.depth == 0, 30), f"{name}: the outbox did not drain"
    finally:
        uplink.stop(drain_s=2.0)
        outbox.stop()
    assert wait(lambda: stats.get("uplink_acked") == len(emits), 10)
    if sub is None:
        return [], stats
    expected_msgs = stats.get("uplink_messages")
    assert wait(lambda: len([m for m in sub.snapshot()[before:] if not m.topic.endswith("/status")])
                >= expected_msgs, 20)
    return [m for m in sub.snapshot()[before:] if not m.topic.endswith("/status")], stats


def as_set(messages: list[Message]) -> dict[tuple[str, int], dict[str, Any]]:
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for m in messages:
        for body in decode(m):
            key = (body["stream"], body["seq"])
            assert key not in out, f"{key} received twice"
            out[key] = body
    return out


def test_grouped_and_deflated_bodies_decode_to_the_same_records(broker, tmp_path: Path, subscriber_factory) -> None:
    sub = subscriber_factory(broker.port, "edge/#")
    emits = workload()
    plain, _ = publish_through_broker(tmp_path, "plain", broker.port, sub, emits)
    grouped, gstats = publish_through_broker(tmp_path, "grouped", broker.port, sub, emits, group="sensor")
    squeezed, zstats = publish_through_broker(tmp_path, "squeezed", broker.port, sub, emits, group="sensor",
                                              compress="deflate", compress_min_bytes=200)

    reference = as_set(plain)
    assert len(reference) == len(emits) == len(plain)
    assert reference[("plc.reg_04", 2)]["error"] == "device reported nan"
    assert reference[("plc.reg_06", 3)]["value"] is None  # NaN travels as null, grouped or not
    assert as_set(grouped) == reference
    assert as_set(squeezed) == reference

    # one message per poll of `plc` (the longest sensor name wins: plc.aux.* go with plc.aux), the rest alone
    topics = [m.topic for m in grouped]
    assert topics.count("edge/press-7/readings/plc") == POLLS
    assert topics.count("edge/press-7/readings/plc.aux") == POLLS
    assert "edge/press-7/reading/ambient" in topics and "edge/press-7/event/plc.events" in topics
    assert not any(t.startswith("edge/press-7/reading/plc") for t in topics)
    per_poll = [json.loads(m.payload) for m in grouped if m.topic == "edge/press-7/readings/plc"]
    assert [len(b["values"]) for b in per_poll] == [10, 9] * (POLLS // 2)
    assert per_poll[1]["values"]["reg_00"] == 230.125  # a bare value: the defaults hold
    assert per_poll[2]["values"]["reg_04"] == {"value": None, "error": "device reported nan", "quality": "bad"}
    assert per_poll[4]["values"]["reg_09"] == {"value": 239.5, "seq": 2}  # every other cycle: its own seq
    assert gstats.get("uplink_messages") == 2 * POLLS + POLLS + 2
    plc_plain = sum(len(m.payload) for m in plain if m.topic.startswith("edge/press-7/reading/plc.reg_"))
    assert sum(len(m.payload) for m in grouped if m.topic.endswith("/readings/plc")) < plc_plain / 3

    zipped = [m for m in squeezed if m.payload[0] == ZLIB_MARK]
    assert all(len(m.payload) < 200 for m in squeezed if m.payload[0] != ZLIB_MARK)  # small bodies stay JSON
    assert all(len(inflate(m.payload)) >= 200 for m in zipped)
    assert "edge/press-7/readings/plc" in {m.topic for m in zipped}
    assert len(zipped) == zstats.get("uplink_compressed") >= POLLS
    assert sum(len(m.payload) for m in zipped) < sum(len(m.payload) for m in grouped if m.topic.endswith("/plc"))


def test_mqtt5_marks_a_deflated_body_with_its_content_type(broker, tmp_path: Path) -> None:
    sub = V5Subscriber(broker.port)
    try:
        emits = workload()
        msgs, _ = publish_through_broker(tmp_path, "v5", broker.port, sub, emits, protocol="5", group="sensor",
                                         compress="deflate", compress_min_bytes=200)
        assert len(as_set(msgs)) == len(emits)
        types: dict[bool, set[str | None]] = {True: set(), False: set()}
        for m, ctype in sub.messages:
            if not m.topic.endswith("/status"):
                types[m.payload[0] == ZLIB_MARK].add(ctype)
        assert types[True] == {CONTENT_TYPE_DEFLATE}
        assert types[False] == {None}
    finally:
        sub.close()


def test_a_batch_of_one_stream_is_deflated_too(broker, tmp_path: Path, subscriber_factory) -> None:
    sub = subscriber_factory(broker.port, "edge/#")
    emits = [Emit("reading", "ambient", T0 + i * 10**9, {"value": 20 + i / 4, "unit": "degC"}) for i in range(40)]
    msgs, _ = publish_through_broker(tmp_path, "batch", broker.port, sub, emits, batch=20, compress="deflate")
    assert all(m.payload[0] == ZLIB_MARK for m in msgs) and len(msgs) >= 2
    got = as_set(msgs)
    assert sorted(got) == [("ambient", i) for i in range(40)]
    assert got[("ambient", 7)]["value"] == 21.75


def rec(stream: str, seq: int, payload: dict[str, Any], quality: Quality = Quality.GOOD, ts: int = T0) -> Record:
    return Record(seq + 1, stream, seq, ts, "reading", quality, payload)


def test_grouped_body_round_trips_every_field() -> None:
    records = [rec("m.a", 5, {"value": 1.5, "unit": "V"}), rec("m.b", 5, {"value": "on", "unit": ""}),
               rec("m.c", 4, {"value": True, "unit": "V", "extra": [1, 2]}, Quality.UNCERTAIN),
               rec("m.d", 5, {"value": {"x": 1}, "unit": "V"})]
    body = grouped_body(records, "a1", "m", historical=True)
    assert body["values"]["d"] == {"value": {"x": 1}}  # an object value is always wrapped
    expected = [json.loads(encode(r, "a1", "edge", historical=True)[1]) for r in records]
    assert expand_grouped(json.loads(json.dumps(body))) == expected


def test_grouping_refuses_records_of_another_poll_or_sensor() -> None:
    with pytest.raises(ValueError, match="does not belong"):
        grouped_body([rec("m.a", 1, {"value": 1, "unit": ""}), rec("m.b", 1, {"value": 1, "unit": ""}, ts=T0 + 1)],
                     "a1", "m")
    with pytest.raises(ValueError, match="does not belong"):
        grouped_body([rec("n.a", 1, {"value": 1, "unit": ""})], "a1", "m")


@pytest.mark.parametrize("body, message", [
    ([1], "expected a JSON object"),
    ({"sensor": "m", "values": {}}, "values: expected an object"),
    ({"values": {"a": 1}}, "sensor: expected the sensor's name"),
    ({"sensor": "m", "values": {"a": {"seq": 1}}}, "values.a: expected an object with a value"),
])
def test_a_malformed_grouped_body_is_named(body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand_grouped(body, "topic edge/a/readings/m")


def test_inflate_refuses_a_bomb_and_a_broken_stream() -> None:
    assert inflate(b'{"a":1}') == b'{"a":1}'
    with pytest.raises(ValueError, match="beyond 1000 bytes"):
        inflate(zlib.compress(b" " * 100_000), "topic t", limit=1000)
    with pytest.raises(ValueError, match="does not inflate"):
        inflate(b"\x78\x9c not zlib", "topic t")
    with pytest.raises(ValueError, match="truncated"):
        inflate(zlib.compress(b"x" * 1000 + bytes(range(256)))[:-8], "topic t")


@pytest.mark.parametrize("key, value", [("group", "sensor"), ("compress", "deflate")])
def test_sparkplug_refuses_group_and_compress(key: str, value: str) -> None:
    raw = raw_config(1883, format="sparkplug", **{key: value})
    raw["sparkplug"] = {"group_id": "plant"}
    with pytest.raises(ConfigError) as e:
        parse(raw, "agent.toml", emulate=True)
    assert f"mqtt.{key}: expected \"none\" with mqtt.format = \"sparkplug\"" in str(e.value)


def test_unknown_group_and_compress_values_are_named() -> None:
    with pytest.raises(ConfigError) as e:
        parse(raw_config(1883, group="poll", compress="gzip"), "agent.toml", emulate=True)
    assert "mqtt.group" in str(e.value) and "mqtt.compress" in str(e.value)


def test_a_sensor_added_by_a_reload_is_grouped(tmp_path: Path) -> None:
    cfg = parse(raw_config(1883, group="sensor"), "<test>", emulate=True)
    outbox = Outbox(tmp_path / "state", cfg.outbox)
    uplink = Uplink(cfg, outbox)
    new = raw_config(1883, group="sensor")
    new["sensors"].append({"name": "pump", "driver": "emulated.temperature", "interval_s": 1.0})
    records = [rec("pump.flow", 0, {"value": 1.0, "unit": "l/min"}), rec("plc.aux.flow", 0, {"value": 2, "unit": ""}),
               rec("plc.reg_00", 0, {"value": 3, "unit": ""})]
    assert [uplink._sensor(r) for r in records] == ["", "plc.aux", "plc"]
    uplink.describe(parse(new, "<test>", emulate=True), {})  # what the pipeline calls after a reload
    assert [uplink._sensor(r) for r in records] == ["pump", "plc.aux", "plc"]
    groups, sensors = uplink._poll_groups(records + [rec("pump.flow", 1, {"value": 1.0, "unit": "l/min"})])
    assert sensors == ["pump", "plc.aux", "plc", "pump"]  # the same stream twice at one time: two messages
    assert [[r.stream for r in g] for g in groups] == [["pump.flow"], ["plc.aux.flow"], ["plc.reg_00"],
                                                       ["pump.flow"]]


def test_a_late_reading_of_an_earlier_poll_does_not_overtake_its_stream(tmp_path: Path) -> None:
    """A reading held back (a deadband's heartbeat) may be committed after the next poll: it gets a message of its
    own rather than joining its poll's message, so each stream's records still go out in order."""
    cfg = parse(raw_config(1883, group="sensor"), "<test>", emulate=True)
    uplink = Uplink(cfg, Outbox(tmp_path / "state", cfg.outbox))
    t1, t2 = T0, T0 + 10**9
    rows = [("plc.a", 0, t1), ("plc.b", 0, t1), ("plc.a", 1, t2), ("plc.c", 0, t1), ("plc.c", 1, t2)]
    records = [Record(i + 1, s, q, ts, "reading", Quality.GOOD, {"value": i, "unit": ""})
               for i, (s, q, ts) in enumerate(rows)]
    groups, _ = uplink._poll_groups(records)
    assert [[(r.stream, r.seq) for r in g] for g in groups] == [
        [("plc.a", 0), ("plc.b", 0)], [("plc.a", 1)], [("plc.c", 0)], [("plc.c", 1)]]
