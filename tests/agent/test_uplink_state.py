"""The uplink's state machine, fast and deterministic, without a broker: CONNACK and birth, PUBACKs matched by mid
(in any order), a link lost mid-batch, a duplicate CONNACK, Sparkplug's fresh session re-sent from the outbox with
QoS 0 records confirmed by an UNSUBACK, the capped reconnect back-off, and the live share of the in-flight window.

`tests.fake_mqtt.FakeClient` stands in for paho's client *interface* (`agent.uplink.MqttClient`), handed to the
uplink through its `client_factory`: it records what the uplink writes, and the test plays the broker by firing
paho's VERSION2 callbacks (`on_connect`, `on_publish`, `on_unsubscribe`, `on_disconnect`) itself, between turns
of the uplink's loop (`Uplink.run_once`), on the same thread, as paho's `loop()` would. The outbox is the real
SQLite one.
Everything end to end (the real paho client, a real Mosquitto) stays in test_store_forward.py, test_sparkplug*.py,
test_wire_group.py and test_uplink_security.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, parse
from agent.outbox import Outbox
from agent.records import Emit
from agent.sparkplug.node import LinkControl
from agent.stats import Stats
from agent.uplink import Uplink
from tests.agent_helpers import wait
from tests.fake_mqtt import FakeClient, Sent, is_data

T0 = 1_764_634_542_000_000_000


class Harness:
    """A real outbox, an uplink on fake clients (one per session the uplink builds), the test turning the loop."""

    def __init__(self, tmp_path: Path, **mqtt_keys: Any) -> None:
        self.config = config(**mqtt_keys)
        self.stats = Stats()
        self.outbox = Outbox(tmp_path / "state", self.config.outbox, self.stats)
        self.outbox.start()
        self.clients: list[FakeClient] = []
        self.uplink = Uplink(self.config, self.outbox, self.stats, client_factory=self.factory)
        self._n = 0

    def factory(self, settings: Any, client_id: str) -> FakeClient:
        c = FakeClient(settings, client_id)
        self.clients.append(c)
        return c

    @property
    def client(self) -> FakeClient:
        return self.clients[-1]

    def put(self, n: int, stream: str = "temp") -> None:
        for _ in range(n):
            assert self.outbox.put(Emit("reading", stream, T0 + self._n * 1_000_000, {"value": self._n * 0.5,
                                                                                      "unit": "degC"}))
            self._n += 1
        assert self.outbox.flush(30)

    def turn(self, n: int = 1) -> None:
        for _ in range(n):
            assert self.uplink.run_once()

    def connect(self) -> FakeClient:
        """Open the socket (one turn), answer with a CONNACK, and let the uplink publish (one turn)."""
        self.turn()
        c = self.client
        assert c.sock is not None
        c.connack()
        self.turn()
        return c

    def acked(self) -> int:
        return int(self.stats.get("uplink_acked") or 0)

    def close(self) -> None:
        self.uplink.stop(drain_s=0.0)
        self.outbox.stop()


def config(**mqtt_keys: Any) -> Config:
    sparkplug = mqtt_keys.pop("sparkplug", None)
    raw: dict[str, Any] = {
        "agent": {"id": "press-7"},
        "mqtt": {"url": "mqtt://127.0.0.1:1883", "inflight": 4, "reconnect_min_s": 0.001,
                 "reconnect_max_s": 0.004, **mqtt_keys},
        "outbox": {"commit_interval_ms": 10},
        "sensors": [{"name": "temp", "driver": "emulated.temperature", "interval_s": 1.0}],
    }
    if sparkplug is not None:
        raw["mqtt"]["format"] = "sparkplug"
        raw["sparkplug"] = {"group_id": "plant1", **sparkplug}
    return parse(raw, "<test>", emulate=True)


@pytest.fixture
def harness(tmp_path: Path):
    made: list[Harness] = []

    def make(**mqtt_keys: Any) -> Harness:
        h = Harness(tmp_path / f"h{len(made)}", **mqtt_keys)
        made.append(h)
        h.uplink.start(thread=False)
        return h

    yield make
    for h in made:
        h.close()


def seqs(msgs: list[Sent]) -> list[int]:
    out: list[int] = []
    for m in msgs:
        body = json.loads(m.payload)
        out += [b["seq"] for b in (body if isinstance(body, list) else [body])]
    return out


def remaining_seqs(h: Harness) -> list[int]:
    reader = h.outbox.reader()
    try:
        return [r.seq for r in reader.fetch(0, 1000)]
    finally:
        reader.close()


def settled(h: Harness, depth: int) -> bool:
    """The outbox writer applied the acks: `depth` records are left."""
    return wait(lambda: h.outbox.depth == depth, 20)


# -- JSON: QoS 1, PUBACK by mid -------------------------------------------------------------------------------


def test_connack_publishes_the_birth_then_data_within_the_window(harness) -> None:
    h = harness()
    h.put(10)
    h.turn()
    c = h.client
    assert c.connects == 1 and c.will is not None and json.loads(c.will[1])["status"] == "offline"
    assert c.wire == [], "nothing is published before the CONNACK"
    c.connack()
    birth = c.wire[0]
    assert birth.topic == "edge/press-7/status" and birth.retain and json.loads(birth.payload)["status"] == "online"
    h.turn()
    assert seqs(c.data()) == [0, 1, 2, 3], "oldest first, at most `inflight` (4) awaiting a PUBACK"
    h.turn(3)
    assert len(c.data()) == 4, "a full window publishes nothing more"
    assert h.acked() == 0 and h.outbox.depth == 10


def test_puback_out_of_order_deletes_exactly_the_acknowledged_records(harness) -> None:
    h = harness()
    h.put(10)
    c = h.connect()
    mids = c.data_inflight()
    c.puback(mids[2], mids[0])  # seq 2 and seq 0, in that order
    h.turn()
    assert h.acked() == 2
    assert settled(h, 8)
    assert remaining_seqs(h) == [1, 3, 4, 5, 6, 7, 8, 9], "only the two PUBACKed records left the outbox"
    assert seqs(c.data()) == [0, 1, 2, 3, 4, 5], "the two freed slots are used at once"
    for mid in reversed(c.data_inflight()):  # the rest, newest first
        c.puback(mid)
    h.turn()
    while c.data_inflight():
        c.puback(*reversed(c.data_inflight()))
        h.turn()
    assert h.acked() == 10 and settled(h, 0)
    assert sorted(seqs(c.data())) == list(range(10)), "each record exactly once without a fault"


def test_link_lost_mid_batch_keeps_every_unacknowledged_record_and_sends_it_again(harness, caplog) -> None:
    h = harness()
    h.put(12)
    c = h.connect()
    first = c.data_inflight()
    c.puback(first[0], first[1])  # two of the four reach the broker and are acknowledged
    c.lose_link(unnoticed=1)
    h.turn()  # handles the two PUBACKs, publishes two more into the dead link, then...
    assert h.acked() == 2
    assert seqs(c.data()) == [0, 1, 2, 3], "what was published into the dead link never reached the broker"
    with caplog.at_level(logging.WARNING, logger="edge_agent.uplink"):
        h.turn()  # ...loop() notices the loss
    assert h.stats.get("link") == "down" and h.stats.get("uplink_disconnects") == 1
    assert "lost the broker" in caplog.text and "connection lost" in h.uplink.last_error
    h.put(3)  # records keep arriving while the link is down
    assert h.acked() == 2 and settled(h, 13), "nothing is deleted without its PUBACK"
    assert remaining_seqs(h) == list(range(2, 15))
    assert len(h.clients) == 1, "JSON keeps its client: paho re-sends what is in flight"
    h.turn()  # reconnect()
    assert c.connects == 2
    before = len(c.wire)
    c.connack()
    resent = [m for m in c.wire[before:] if m.dup and is_data(m.topic)]
    assert seqs(resent) == [2, 3, 4, 5], "paho re-sends every message still awaiting its PUBACK, with DUP"
    for _ in range(20):
        if not c.data_inflight():
            break
        c.puback(*c.data_inflight())
        h.turn()
    assert h.acked() == 15 and settled(h, 0)
    delivered = seqs(c.data())
    assert set(delivered) == set(range(15)), "nothing lost"
    assert len(delivered) - 15 <= 4, "duplicates are bounded by the in-flight window"


def test_duplicate_connack_neither_repeats_nor_relabels_records(harness) -> None:
    h = harness()
    h.put(3)
    c = h.connect()  # the three are the backlog: historical
    c.puback(*c.data_inflight())
    h.turn()
    h.put(2)  # live records committed, not yet fetched...
    c.connack()  # ...when a second CONNACK arrives on the same session
    h.turn()
    c.puback(*c.data_inflight())
    h.turn()
    assert h.stats.get("uplink_connects") == 2
    assert [m.topic for m in c.wire].count("edge/press-7/status") == 2, "each CONNACK publishes the birth"
    bodies = [json.loads(m.payload) for m in c.data()]
    assert [b["seq"] for b in bodies] == [0, 1, 2, 3, 4], "no record published twice"
    assert [b.get("historical", False) for b in bodies] == [True, True, True, False, False], \
        "records committed after the first CONNACK are live, not backlog"
    assert h.acked() == 5 and settled(h, 0)


def test_live_share_keeps_part_of_the_window_for_live_data_while_a_backlog_drains(harness) -> None:
    h = harness(inflight=8, live_share=0.25)
    h.put(20)  # the backlog: in the outbox before the session
    h.turn()
    c = h.client
    c.connack()
    h.put(20)  # live records, committed after the CONNACK
    h.turn()
    bodies = [json.loads(m.payload) for m in c.data()]
    live = [b["seq"] for b in bodies if not b.get("historical")]
    old = [b["seq"] for b in bodies if b.get("historical")]
    assert live == [20, 21], "ceil(8 × 0.25) = 2 slots for live data (mqtt.live_share)"
    assert old == [0, 1, 2, 3, 4, 5], "the rest of the window for the backlog, oldest first"
    for _ in range(30):  # drain: every turn keeps the split while both wait
        if not c.data_inflight():
            break
        c.puback(*c.data_inflight())
        h.turn()
    bodies = [json.loads(m.payload) for m in c.data()]
    assert sorted(b["seq"] for b in bodies) == list(range(40))
    assert all(b.get("historical") for b in bodies if b["seq"] < 20)
    assert not any(b.get("historical") for b in bodies if b["seq"] >= 20)
    assert h.stats.get("uplink_published_historical") == 20 and settled(h, 0)


def test_reconnect_delay_doubles_up_to_the_cap_and_resets_on_a_session(harness, caplog) -> None:
    h = harness(reconnect_min_s=0.001, reconnect_max_s=0.004)
    h.client.refuse = ConnectionRefusedError(111, "Connection refused")
    delays = []
    with caplog.at_level(logging.WARNING, logger="edge_agent.uplink"):
        for _ in range(8):
            h.turn()
            delays.append(h.uplink.retry_delay_s)
    assert delays == [0.002, 0.004, 0.004, 0.004, 0.004, 0.004, 0.004, 0.004], \
        "doubled per failed attempt, never above mqtt.reconnect_max_s"
    assert h.stats.get("uplink_connect_failures") == 8
    assert caplog.text.count("cannot reach the broker") == 1, "an outage is reported once, not per attempt"
    assert "connection refused" in h.uplink.last_error
    h.client.refuse = None
    h.connect()
    assert h.uplink.retry_delay_s == 0.001, "a session resets the back-off"
    assert h.stats.get("link") == "up" and h.uplink.last_error == ""


# -- Sparkplug: a fresh session after a link loss; QoS 0 confirmed by an UNSUBACK -----------------------------


def ddata_values(msgs: list[Sent]) -> list[float]:
    from agent.sparkplug.proto import Payload
    return [m.double_value for s in msgs if "/DDATA/" in s.topic for m in Payload.FromString(s.payload).metrics]


def test_sparkplug_qos0_records_leave_only_after_the_unsuback_and_a_lost_link_resends_them_from_the_outbox(
        harness) -> None:
    h = harness(inflight=3, sparkplug={})
    h.put(3)
    assert isinstance(h.uplink, LinkControl), "the uplink is the Sparkplug node's link"
    c = h.connect()
    assert [s.topic.split("/")[2] for s in c.wire[:3]] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    assert [s.qos for s in c.data()] == [0, 0, 0], "Sparkplug's data QoS 0"
    h.turn()  # paho reports them written (on_publish): the uplink asks for a confirmation
    assert list(c.unsubscribes), "an UNSUBSCRIBE follows the written records"
    assert h.acked() == 0, "written to the socket is not received by the broker"
    c.lose_link()  # the link dies before the UNSUBACK
    h.turn()
    assert h.stats.get("uplink_disconnects") == 1
    assert h.acked() == 0 and settled(h, 3)
    h.turn()  # a fresh session: a new client from the factory, a new bdSeq, births again
    assert len(h.clients) == 2
    c2 = h.client
    assert c2.connects == 1 and c2.will is not None and "NDEATH" in c2.will[0]
    c2.connack()
    h.turn()
    assert ddata_values(c2.data()) == [0.0, 0.5, 1.0], "re-sent from the outbox, in order"
    h.turn()
    (mid,) = c2.unsubscribes
    assert h.acked() == 0
    c2.unsuback(mid)
    h.turn()
    assert h.acked() == 3 and settled(h, 0)


def test_sparkplug_qos1_inflight_at_link_loss_is_resent_by_the_new_session_not_by_paho(harness) -> None:
    h = harness(inflight=4, sparkplug={"data_qos": 1})
    h.put(6)
    c = h.connect()
    mids = c.data_inflight()
    assert len(mids) == 4
    c.puback(mids[1])
    c.lose_link()
    h.turn()
    h.turn()
    assert h.acked() == 1 and settled(h, 5)
    h.turn()
    c2 = h.client
    assert c2 is not c
    c2.connack()
    h.turn()
    assert not any(m.dup for m in c2.wire), "a fresh client: nothing re-sent by paho"
    assert ddata_values(c2.data()) == [0.0, 1.0, 1.5, 2.0], "every record not acknowledged, from the outbox"
    while c2.data_inflight():
        c2.puback(*c2.data_inflight())
        h.turn()
    assert h.acked() == 6 and settled(h, 0)
    assert sorted(set(ddata_values(c.data() + c2.data()))) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
