"""Sparkplug B 3.0 edge node, checked with an independent implementation (pysparkplug, test-only) against a real
broker: ordering, topics, aliases, seq wrap, bdSeq across abrupt disconnects and restarts, rebirth, STATE gating."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

pysparkplug = pytest.importorskip("pysparkplug", reason="the test-only Sparkplug decoder (installed by .ci/run)")

from agent.config import SparkplugConfig, parse  # noqa: E402
from agent.pipeline import Pipeline  # noqa: E402
from tests.agent_helpers import wait  # noqa: E402

pytestmark = pytest.mark.slow  # whole agents against a broker and a Sparkplug host

GROUP, NODE = "plant1", "press7"


class Host:
    """A Sparkplug host: records every spBv1.0 message (topic, raw bytes) and can publish STATE and NCMD."""

    def __init__(self, port: int) -> None:
        self.msgs: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scada-host")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("spBv1.0/#", qos=1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(10)

    def _on_message(self, c, u, msg) -> None:
        with self._lock:
            self.msgs.append((msg.topic, bytes(msg.payload)))

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.msgs)

    def of(self, kind: str) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p in self.snapshot() if t.split("/")[2] == kind]

    def state(self, online: bool, ts: int) -> None:
        self.c.publish("spBv1.0/STATE/scada", json.dumps({"online": online, "timestamp": ts}), qos=1, retain=True)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def sp_config(port: int, state: Path | None = None, **sparkplug) -> object:
    raw = {
        "agent": {"id": NODE},
        "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "format": "sparkplug", "reconnect_min_s": 0.1,
                 "reconnect_max_s": 0.5},
        "sparkplug": {"group_id": GROUP, **sparkplug},
        "outbox": {"commit_interval_ms": 20},
        "commands": {"enabled": True, "allow": ["set"]},
        "sensors": [
            {"name": "vib", "driver": "emulated.vibration", "rate_hz": 1000, "block_size": 125, "window": 250},
            {"name": "temp", "driver": "emulated.temperature", "interval_s": 0.02},
        ],
    }
    return parse(raw, "<test>", emulate=True)


def check_stream(msgs: list[tuple[str, bytes]]) -> dict[str, object]:
    """Decode every message with pysparkplug and check the node's rules. Returns the last births per device."""
    births: dict[str, object] = {}
    nbirth = None
    expected_seq = None
    for topic, raw in msgs:
        parts = topic.split("/")
        if parts[1] == "STATE":  # the primary host's own message
            continue
        assert parts[0] == "spBv1.0" and parts[1] == GROUP and parts[3] == NODE, topic
        kind = parts[2]
        if kind == "NBIRTH":
            nbirth = pysparkplug.NBirth.decode(raw)
            assert parts[4:] == []
            pb = pysparkplug._protobuf.Payload.FromString(raw)
            assert pb.seq == 0
            names = {m.name for m in nbirth.metrics}
            assert {"bdSeq", "Node Control/Rebirth"} <= names
            assert all(m.alias is not None for m in nbirth.metrics), "every BIRTH metric has an alias"
            births = {}
            expected_seq = 1
            continue
        if kind == "NDEATH":
            expected_seq = None
            nbirth = None
            continue
        if kind in ("STATE", "NCMD", "DCMD"):
            continue
        assert nbirth is not None, f"{kind} before NBIRTH"
        pb = pysparkplug._protobuf.Payload.FromString(raw)
        assert pb.seq == expected_seq, f"{kind} seq {pb.seq}, expected {expected_seq}"
        expected_seq = (expected_seq + 1) % 256
        device = parts[4]
        if kind == "DBIRTH":
            births[device] = pysparkplug.DBirth.decode(raw)
            assert all(m.alias is not None and m.name for m in births[device].metrics)
        elif kind == "DDATA":
            assert device in births, f"DDATA for {device} before its DBIRTH"
            for m in pb.metrics:
                assert not m.name and m.alias, "DATA carries metrics by alias only"
            decoded = pysparkplug.DData.decode(raw, birth=births[device])  # resolves every alias
            assert all(m.name for m in decoded.metrics)
        elif kind == "DDEATH":
            births.pop(device, None)
    return births


@pytest.fixture
def host(broker):
    h = Host(broker.port)
    yield h
    h.close()


def test_births_data_and_death_in_order_with_consistent_aliases(broker, host, tmp_path: Path) -> None:
    agent = Pipeline(sp_config(broker.port), tmp_path / "state")
    agent.start()
    try:
        assert wait(lambda: len(host.of("DDATA")) >= 20)
    finally:
        agent.stop()
    assert wait(lambda: host.of("NDEATH"))
    msgs = host.snapshot()
    assert msgs[0][0] == f"spBv1.0/{GROUP}/NBIRTH/{NODE}"
    births = check_stream(msgs)
    assert set(births) == {"vib", "temp", "agent"}
    temp = {m.name: m for m in births["temp"].metrics}
    assert temp["value"].datatype.name == "DOUBLE"
    vib = {m.name for m in births["vib"].metrics}
    assert {"x/rms", "x/peak"} <= vib
    # node and device aliases are unique across the whole node
    nb = pysparkplug.NBirth.decode(host.of("NBIRTH")[0][1])
    aliases = [m.alias for m in nb.metrics] + [m.alias for b in births.values() for m in b.metrics]
    assert len(aliases) == len(set(aliases))
    # a clean stop publishes NDEATH with the bdSeq of the NBIRTH
    nd = pysparkplug.NDeath.decode(host.of("NDEATH")[-1][1])
    assert nd.bd_seq_metric.name == "bdSeq"
    assert [nd.bd_seq_metric.value] == [m.value for m in nb.metrics if m.name == "bdSeq"]


def test_seq_wraps_after_255(broker, host, tmp_path: Path) -> None:
    agent = Pipeline(sp_config(broker.port), tmp_path / "state")
    agent.start()
    try:
        assert wait(lambda: len(host.snapshot()) >= 300, 60)
    finally:
        agent.stop()
    check_stream(host.snapshot())
    seqs = [pysparkplug._protobuf.Payload.FromString(p).seq for t, p in host.snapshot()
            if t.split("/")[2] in ("DBIRTH", "DDATA", "DDEATH")]
    wrap = seqs.index(255)
    assert seqs[wrap + 1] == 0


def _write_config(path: Path, port: int) -> Path:
    path.write_text(f"""
[agent]
id = "{NODE}"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
format = "sparkplug"
[sparkplug]
group_id = "{GROUP}"
[[sensors]]
name = "temp"
driver = "emulated.temperature"
interval_s = 0.1
""")
    return path


def _bdseq(raw: bytes) -> int:
    return next(m.long_value for m in pysparkplug._protobuf.Payload.FromString(raw).metrics if m.name == "bdSeq")


def test_bdseq_matches_the_ndeath_after_kill_9_and_continues_after_restart(broker, host, tmp_path: Path) -> None:
    cfg = _write_config(tmp_path / "agent.toml", broker.port)
    cmd = [sys.executable, "-m", "agent", "run", "--config", str(cfg), "--state-dir", str(tmp_path / "state")]
    seen = []
    for _ in range(3):
        n = len(host.of("NBIRTH"))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait(lambda: len(host.of("NBIRTH")) > n and len(host.of("DDATA")) > 0, 60)
            nd = len(host.of("NDEATH"))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert wait(lambda: len(host.of("NDEATH")) > nd, 30), "the broker publishes the Last Will"
        birth, death = _bdseq(host.of("NBIRTH")[-1][1]), _bdseq(host.of("NDEATH")[-1][1])
        assert birth == death
        seen.append(birth)
    assert seen == [(seen[0] + i) % 256 for i in range(3)], f"bdSeq must continue across restarts: {seen}"
    check_stream(host.snapshot())


def test_rebirth_on_ncmd(broker, host, tmp_path: Path) -> None:
    agent = Pipeline(sp_config(broker.port), tmp_path / "state")
    agent.start()
    try:
        assert wait(lambda: {t.split("/")[-1] for t, _ in host.of("DBIRTH")} >= {"vib", "temp"})
        ncmd = pysparkplug.NCmd(timestamp=int(time.time() * 1000), metrics=(pysparkplug.Metric(
            timestamp=None, name="Node Control/Rebirth", datatype=pysparkplug.DataType.BOOLEAN, value=True),))
        host.c.publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", ncmd.encode(), qos=1)
        assert wait(lambda: len(host.of("NBIRTH")) == 2)
        assert wait(lambda: len(host.of("DBIRTH")) >= 4)
        host.c.publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", b"\x08\xff\xff garbage", qos=1)  # must not hurt
        n = len(host.of("DDATA"))
        assert wait(lambda: len(host.of("DDATA")) > n + 5)
    finally:
        agent.stop()
    check_stream(host.snapshot())
    assert agent.stats.get("sparkplug_rebirths") == 1 and agent.stats.get("sparkplug_bad_messages") == 1


def test_primary_host_state_gates_birth_and_the_backlog_is_flushed_as_historical(broker, host,
                                                                                 tmp_path: Path) -> None:
    agent = Pipeline(sp_config(broker.port, primary_host_id="scada"), tmp_path / "state")
    t0 = int(time.time() * 1000)
    agent.start()
    try:
        assert wait(lambda: agent.stats.get("link") == "up")
        assert wait(lambda: agent.outbox.depth >= 20), "records are stored while no primary host is online"
        assert not host.of("NBIRTH"), "no BIRTH before the primary host's STATE"
        host.state(True, t0)
        assert wait(lambda: len(host.of("NBIRTH")) == 1 and len(host.of("DDATA")) >= 10)
        host.state(False, t0 + 1)
        assert wait(lambda: len(host.of("NDEATH")) == 1)
        n_data = len(host.of("DDATA"))
        depth = agent.outbox.depth
        assert wait(lambda: agent.outbox.depth >= depth + 20), "the node keeps storing while the host is away"
        assert len(host.of("DDATA")) <= n_data + 1
        host.state(True, t0 - 10)  # a stale STATE (older timestamp) must not trigger a birth
        time.sleep(0.5)
        assert len(host.of("NBIRTH")) == 1
        host.state(True, t0 + 2)
        assert wait(lambda: len(host.of("NBIRTH")) == 2)
        assert wait(lambda: agent.stats.get("uplink_published_historical") > 0 and agent.uplink._backlog_end == 0)
    finally:
        agent.stop(drain_s=15)
    assert agent.outbox.depth == 0, "everything stored was published before the clean stop"
    # the clean stop's NDEATH comes last from this publisher: once it is here, everything before it is too
    assert wait(lambda: len(host.of("NDEATH")) == 2)
    msgs = host.snapshot()
    check_stream(msgs)
    b1, b2 = (_bdseq(p) for _, p in host.of("NBIRTH"))
    assert b2 == (b1 + 1) % 256 and _bdseq(host.of("NDEATH")[0][1]) == b1
    # every temp reading committed arrived (unique timestamps), historical ones in order
    second = msgs.index(host.of("NBIRTH")[1])
    births: dict[str, object] = {}
    hist, live, stamps = [], [], set()
    for topic, raw in msgs:
        if topic.startswith("spBv1.0/STATE/"):
            continue
        kind, dev = topic.split("/")[2], topic.split("/")[-1]
        if kind == "DBIRTH":
            births[dev] = pysparkplug.DBirth.decode(raw)
        if kind == "DDATA" and dev == "temp":
            for m in pysparkplug.DData.decode(raw, birth=births[dev]).metrics:
                stamps.add(m.timestamp)
                if msgs.index((topic, raw)) > second:
                    (hist if m.is_historical else live).append(m.timestamp)
    assert hist, "the backlog stored while the host was away is flushed as historical"
    assert hist == sorted(hist) and live == sorted(live)
    assert len(stamps) == agent.outbox.next_seq("temp"), "nothing lost"


def test_sparkplug_config_requires_a_group(tmp_path: Path) -> None:
    from agent.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        parse({"mqtt": {"format": "sparkplug"}}, "agent.toml")
    assert "agent.toml: sparkplug.group_id: missing: expected a group id" in str(err.value)
    with pytest.raises(ConfigError, match=r"sparkplug.group_id: expected an id without"):
        parse({"mqtt": {"format": "sparkplug"}, "sparkplug": {"group_id": "a/b"}}, "agent.toml")
    assert dataclasses.asdict(SparkplugConfig())["data_qos"] == 0


def test_dcmd_writes_go_through_the_command_allow_list(broker, host, tmp_path: Path) -> None:
    def config(allow: list[str]):
        return parse({
            "agent": {"id": NODE},
            "mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}", "format": "sparkplug"},
            "sparkplug": {"group_id": GROUP},
            "commands": {"enabled": True, "allow": allow},
            "buses": {"header": {"type": "gpio"}},
            "sensors": [{"name": "stack_light", "driver": "gpio.output", "bus": "header", "pin": 5,
                         "writable": True, "interval_s": 0.1}],
        }, "<test>", emulate=True)

    def dcmd(value: object) -> None:
        cmd = pysparkplug.DCmd(timestamp=int(time.time() * 1000), metrics=(pysparkplug.Metric(
            timestamp=None, name="value", datatype=pysparkplug.DataType.BOOLEAN, value=value),))
        host.c.publish(f"spBv1.0/{GROUP}/DCMD/{NODE}/stack_light", cmd.encode(), qos=1)

    def light_values() -> list[bool]:
        births: dict[str, object] = {}
        out = []
        for topic, raw in host.snapshot():
            kind = topic.split("/")[2] if not topic.startswith("spBv1.0/STATE") else ""
            if kind == "DBIRTH":
                births[topic.split("/")[-1]] = pysparkplug.DBirth.decode(raw)
            elif kind == "DDATA" and topic.endswith("/stack_light"):
                out += [m.value for m in pysparkplug.DData.decode(raw, birth=births["stack_light"]).metrics]
        return out

    agent = Pipeline(config(["set"]), tmp_path / "state")
    agent.start()
    try:
        assert wait(lambda: light_values() and light_values()[-1] is False)
        dcmd(True)
        assert wait(lambda: light_values()[-1] is True), "a DCMD write switches the output, read back as DDATA"
        assert agent.stats.get("commands_ok") == 1
    finally:
        agent.stop()
    agent = Pipeline(config(["ping"]), tmp_path / "state2")  # `set` not allowed: the write is refused and audited
    agent.start()
    try:
        assert wait(lambda: agent.stats.get("link") == "up")
        assert wait(lambda: agent.stats.get("uplink_subscriptions") >= 1)  # NCMD/DCMD acknowledged by the broker
        dcmd(True)
        assert wait(lambda: agent.stats.get("commands_rejected") >= 1)
        assert agent.readers[0].source.device.value == 0
    finally:
        agent.stop()
