"""The fleet ingest stores what `mqtt.group = "sensor"` and `mqtt.compress = "deflate"` send exactly as it stores
ungrouped records: real agent uplinks publish the same records through Mosquitto, PostgreSQL holds the same rows."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from agent.fleet.ingest import BadMessage, parse_message
from tests.agent_helpers import wait
from tests.agent.fleet.test_ingest import Running, q
from tests.mqtt_helpers import MosquittoBroker
from tests.agent.test_wire_group import publish_through_broker, workload

COLUMNS = "stream, seq, ts, quality, value, unit, error, historical"


def test_grouped_and_deflated_records_are_stored_like_plain_ones(tmp_path: Path, fleet_db: str) -> None:
    b = MosquittoBroker(tmp_path, persistent=True).start()
    run = Running(b.port, fleet_db, group="g", client_id="ingest-1")
    emits = workload()
    readings = sum(1 for e in emits if e.kind == "reading")
    try:
        publish_through_broker(tmp_path, "plain", b.port, None, emits, agent_id="plain")
        publish_through_broker(tmp_path, "zip", b.port, None, emits, agent_id="zip", group="sensor",
                               compress="deflate", compress_min_bytes=64)
        assert wait(lambda: q(fleet_db, "SELECT count(*) FROM readings") == [(2 * readings,)], 30), \
            run.ingest.stats
    finally:
        run.stop()
        b.stop()
    assert run.ingest.stats.rejected == 0
    plain = q(fleet_db, f"SELECT {COLUMNS} FROM readings WHERE agent = 'plain' ORDER BY stream, seq")
    zipped = q(fleet_db, f"SELECT {COLUMNS} FROM readings WHERE agent = 'zip' ORDER BY stream, seq")
    assert zipped == plain and len(plain) == readings
    assert ("plc.reg_04", 2) in [(r[0], r[1]) for r in zipped if r[3] == "bad" and r[6] == "device reported nan"]
    # every stream of the grouped agent is contiguous: no hole from grouping
    assert q(fleet_db, "SELECT count(*) FROM holes WHERE agent = 'zip'") == [(0,)]
    assert q(fleet_db, "SELECT count(*) FROM events WHERE agent = 'zip'") == [(1,)]


GROUPED = {"agent": "a1", "sensor": "m", "ts": "2026-01-01T00:00:00.000Z", "seq": 3, "quality": "good",
           "unit": "V", "values": {"u": 1.5, "i": {"value": 2.5, "unit": "A", "seq": 1}}}


def test_parse_message_expands_a_grouped_and_a_deflated_body() -> None:
    for body in (json.dumps(GROUPED).encode(), zlib.compress(json.dumps(GROUPED).encode())):
        agent, kind, _, rows = parse_message("edge/a1/readings/m", body, "edge")
        assert (agent, kind) == ("a1", "reading")
        assert [r[:3] + r[4:] for r in rows] == [("a1", "m.u", 3, "good", False, 1.5, "V", None),
                                                 ("a1", "m.i", 1, "good", False, 2.5, "A", None)]


@pytest.mark.parametrize("topic, body, expected", [
    ("edge/a1/readings/n", json.dumps(GROUPED).encode(), "sensor 'm' contradicts the topic"),
    ("edge/a2/readings/m", json.dumps(GROUPED).encode(), "values.u: agent 'a1' contradicts the topic"),
    ("edge/a1/readings/m", json.dumps({**GROUPED, "values": {"u": "hot"}}).encode(),
     "values.u.value: expected a number"),
    ("edge/a1/readings/m", json.dumps({**GROUPED, "seq": None}).encode(), "values.u.seq: expected an integer"),
    ("edge/a1/readings/m", json.dumps({**GROUPED, "values": []}).encode(), "values: expected an object"),
    ("edge/a1/readings/m", b"\x78\x9cbroken", "topic edge/a1/readings/m: a truncated zlib body"),
    ("edge/a1/readings/m", b"\x78\x00\x00", "topic edge/a1/readings/m: a zlib body (first byte 0x78) that does not"),
    ("edge/a1/reading/t", zlib.compress(b"[]"), "an empty batch"),
])
def test_bad_grouped_and_deflated_messages_are_named(topic: str, body: bytes, expected: str) -> None:
    with pytest.raises(BadMessage) as e:
        parse_message(topic, body, "edge")
    assert expected in str(e.value)
