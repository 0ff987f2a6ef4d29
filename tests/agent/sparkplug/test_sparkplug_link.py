"""The Sparkplug edge node behind its narrow seam, without an uplink or a broker: `SparkplugFormat` gets the
configuration, the state directory, the boot time and the counters, and asks the link for the rest through
`LinkControl` (set_ready, reconnect, on_write). Here the link is a recorder and the client the stand-in of
tests/fake_mqtt.py; the node's behaviour end to end stays in test_sparkplug.py and test_sparkplug_conformance.py
(real paho, real Mosquitto, an independent decoder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse
from agent.sparkplug.node import LinkControl, SparkplugFormat
from agent.sparkplug.proto import Payload
from agent.stats import Stats
from tests.fake_mqtt import FakeClient

BOOT_NS = 1_764_634_542_123_000_000


class RecordingLink:
    """A LinkControl that records what the node asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.on_write: Any = None

    def set_ready(self, ready: bool) -> None:
        self.calls.append(("ready", ready))

    def reconnect(self, after: Any = None) -> None:
        self.calls.append(("reconnect", after))


@pytest.fixture
def node(tmp_path: Path) -> tuple[SparkplugFormat, RecordingLink, FakeClient, Stats]:
    cfg = parse({"agent": {"id": "press-7"}, "mqtt": {"format": "sparkplug"},
                 "sparkplug": {"group_id": "plant1", "primary_host_id": "scada"},
                 "sensors": [{"name": "temp", "driver": "emulated.temperature", "interval_s": 1.0}]},
                "<test>", emulate=True)
    link, stats = RecordingLink(), Stats()
    assert isinstance(link, LinkControl)
    fmt = SparkplugFormat(cfg, link, state_dir=tmp_path / "state", boot_ns=BOOT_NS, stats=stats)
    client = FakeClient(cfg.mqtt, "press-7")
    waiting: list[bool] = []
    client.on_connect = lambda c, userdata, flags, rc, props: waiting.append(fmt.on_connect(c))
    client.on_message = lambda c, userdata, msg: fmt.on_message(c, msg)
    fmt.before_connect(client)
    client.connect("broker", 1883)
    client.connack()
    assert waiting == [False], "with a primary host, the node waits for its STATE before the birth"
    return fmt, link, client, stats


def kinds(client: FakeClient) -> list[str]:
    return [s.topic.split("/")[2] for s in client.wire if s.kind == "publish"]


def test_the_primary_hosts_state_drives_the_link_through_link_control(node, tmp_path: Path) -> None:
    fmt, link, client, stats = node
    assert client.will is not None and client.will[0] == "spBv1.0/plant1/NDEATH/press-7"
    assert json.loads((tmp_path / "state" / "sparkplug.json").read_text())["bdseq"] == 0
    assert kinds(client) == [] and link.calls == []
    client.deliver("spBv1.0/STATE/scada", json.dumps({"online": True, "timestamp": 5}).encode())
    assert kinds(client) == ["NBIRTH", "DBIRTH", "DBIRTH"]
    assert link.calls == [("ready", True)], "born: data may flow"
    nbirth = Payload.FromString(client.wire[0].payload)
    boot = next(m for m in nbirth.metrics if m.name == "Properties/Boot Time")
    assert boot.long_value == BOOT_NS // 1_000_000, "the boot time handed in, not read from an uplink"
    client.deliver("spBv1.0/STATE/scada", json.dumps({"online": False, "timestamp": 6}).encode())
    assert kinds(client)[-1] == "NDEATH"
    ndeath_mid = client.wire[-1].mid
    assert [c[0] for c in link.calls] == ["ready", "ready", "reconnect"]
    assert link.calls[1] == ("ready", False), "the host is gone: data waits in the outbox"
    assert link.calls[2][1].mid == ndeath_mid, "reconnect once the NDEATH is acknowledged"
    assert stats.get("sparkplug_host_offline") == 1


def test_a_dcmd_write_goes_to_the_links_writer_or_is_refused(node) -> None:
    fmt, link, client, stats = node
    client.deliver("spBv1.0/STATE/scada", json.dumps({"online": True, "timestamp": 5}).encode())
    dcmd = Payload()
    m = dcmd.metrics.add()
    m.name = "value"
    m.double_value = 21.5
    client.deliver("spBv1.0/plant1/DCMD/press-7/temp", dcmd.SerializeToString())
    assert stats.get("commands_rejected") == 1, "commands off (on_write None): refused and counted"
    writes: list[tuple[str, Any]] = []
    link.on_write = lambda target, value: writes.append((target, value))
    client.deliver("spBv1.0/plant1/DCMD/press-7/temp", dcmd.SerializeToString())
    assert writes == [("temp", 21.5)]
