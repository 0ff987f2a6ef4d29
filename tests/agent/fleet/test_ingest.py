"""The ingest process with a real Mosquitto and a real PostgreSQL: what it stores, what it rejects, holes and gaps,
and the fleet view. A deterministic publisher speaks the agents' wire format (agent.records.encode)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli import main
from agent.fleet.gaps import cover, fold, watermark
from agent.fleet.ingest import BadMessage, Ingest, parse_message
from agent.records import Record, encode
from hal.types import Quality
from tests.agent_helpers import wait
from tests.mqtt_helpers import MosquittoBroker

T0 = 1_796_000_000_000_000_000


def rec(stream: str, seq: int, kind: str = "reading", **payload: Any) -> Record:
    if kind == "reading" and not payload:
        payload = {"value": seq / 10, "unit": "degC"}
    return Record(seq + 1, stream, seq, T0 + seq * 1_000_000, kind, Quality.GOOD, payload)


class Publisher:
    def __init__(self, port: int) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv5)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def send(self, agent: str, records: list[Record], historical: bool = False) -> None:
        parts = [encode(r, agent, "edge", historical=historical) for r in records]
        body = parts[0][1] if len(parts) == 1 else b"[" + b",".join(p[1] for p in parts) + b"]"
        self.c.publish(parts[0][0], body, qos=1).wait_for_publish(10)

    def raw(self, topic: str, body: bytes, retain: bool = False) -> None:
        self.c.publish(topic, body, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Running:
    """An Ingest in a thread of this process."""

    def __init__(self, port: int, dsn: str, **kw: Any) -> None:
        self.ingest = Ingest(f"mqtt://127.0.0.1:{port}", dsn, batch_ms=20, fold_interval_s=0.2, **kw)
        ready = threading.Event()
        self.thread = threading.Thread(target=self.ingest.run, kwargs={"ready": ready}, daemon=True)
        self.thread.start()
        assert ready.wait(30), "ingest did not subscribe"

    def stop(self) -> None:
        self.ingest.stop()
        self.thread.join(30)


def q(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as c:
        return c.execute(sql, params).fetchall()


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 5)), max_size=30))
@settings(max_examples=300, deadline=None)
def test_holes_match_a_brute_force_set(ranges: list[tuple[int, int]]) -> None:
    covered: set[int] = set()
    holes: list[list[Any]] = []
    max_seq = -1
    for first, length in ranges:
        max_seq = cover(max_seq, holes, first, first + length, None)
        covered.update(range(first, first + length + 1))
        missing = sorted(set(range(max_seq + 1)) - covered)
        assert [s for h in holes for s in range(h[0], h[1] + 1)] == missing
        assert watermark(max_seq, holes) == (missing[0] - 1 if missing else max_seq)


@pytest.mark.parametrize("topic, body, expected", [
    ("edge/a1/reading/t", b"{", "the body is not JSON"),
    ("edge/a1/reading/t", b'{"agent":"a2","stream":"t","seq":1,"ts":"2026-01-01T00:00:00.000Z","quality":"good"}',
     "contradict the topic"),
    ("edge/a1/reading/t", b'{"agent":"a1","stream":"t","seq":-1,"ts":"2026-01-01T00:00:00.000Z","quality":"good"}',
     ".seq: expected an integer >= 0, found -1"),
    ("edge/a1/reading/t", b'{"agent":"a1","stream":"t","seq":1,"ts":"yesterday","quality":"good"}',
     ".ts: expected an ISO 8601 UTC time"),
    ("edge/a1/reading/t", b'{"agent":"a1","stream":"t","seq":1,"ts":"2026-01-01T00:00:00.000Z","quality":"ok"}',
     ".quality: expected good, uncertain or bad"),
    ("edge/a1/reading/t", b'[{"agent":"a1","stream":"t","seq":1,"ts":"2026-01-01T00:00:00.000Z","quality":"good",'
                          b'"value":"hot"}]', "topic edge/a1/reading/t [0].value: expected a number"),
    ("edge/a1/blob/t", b"{}", "expected a kind out of"),
    ("edge/a1/event/outbox", b'{"agent":"a1","stream":"outbox","seq":1,"ts":"2026-01-01T00:00:00.000Z",'
                             b'"quality":"good","event":"gap","gap_stream":"t","ranges":[[5,3]]}',
     ".ranges: expected a list of inclusive [first, last] seq ranges"),
])
def test_bad_messages_are_named(topic: str, body: bytes, expected: str) -> None:
    with pytest.raises(BadMessage, match=None) as e:
        parse_message(topic, body, "edge")
    assert expected in str(e.value)


def test_stores_each_record_once_tracks_holes_and_explains_gaps(tmp_path: Path, fleet_db: str, capsys) -> None:
    b = MosquittoBroker(tmp_path, persistent=True).start()
    run = Running(b.port, fleet_db, group="g", client_id="ingest-1")
    pub = Publisher(b.port)
    try:
        pub.raw("edge/m1/status", b'{"agent":"m1","status":"online","version":"9.9","config":"abc",'
                                  b'"boot":"2026-12-01T00:00:00.000Z","ts":"2026-12-01T00:00:01.000Z"}', retain=True)
        pub.send("m1", [rec("temp", s) for s in range(0, 10)])             # a batch
        pub.send("m1", [rec("temp", s) for s in range(5, 15)])             # overlapping: 5..9 are duplicates
        for s in (15, 16):
            pub.send("m1", [rec("temp", s)])
        pub.send("m1", [rec("temp", s) for s in range(20, 25)], historical=True)  # 17..19 missing
        pub.send("m1", [rec("temp", s) for s in range(30, 32)])                    # 25..29 missing
        pub.send("m1", [rec("outbox", 0, "event", event="gap", reason="purged", gap_stream="temp",
                            ranges=[[25, 29]], count=5)])                          # explains 25..29
        pub.send("m1", [rec("vib", 0, "features", unit="g", rate_hz=1000.0, n=250,
                            features={"x": {"rms": 1.5, "zone": "B"}})])
        pub.send("m1", [rec("vib.events", 0, "event", event="zone", zone="C", previous="B")])
        pub.send("m1", [rec("run.events", 0, "event", event="state", state="running", previous="idle",
                            value=1.0, previous_s=3.0)])
        pub.send("m1", [rec("health", 0, "health", cpu_pct=3.5)])
        pub.raw("edge/m1/reading/temp", b"not json")
        pub.raw("edge/m1/cmd/ping", b'{"id": "1"}')  # a command to the agent: not data, not an error
        assert wait(lambda: run.ingest.stats.messages >= 14, 30), run.ingest.stats
        assert wait(lambda: q(fleet_db, "SELECT watermark FROM streams WHERE stream = 'temp'") == [(16,)], 10)
    finally:
        run.stop()
        pub.close()
        b.stop()
    st_ = run.ingest.stats
    assert st_.records == 29 + 5 and st_.inserted == 24 + 5 and st_.rejected == 1 and st_.ignored == 1
    assert st_.slow_batches >= 1  # the overlapping batch went through the stage
    seqs = [s for (s,) in q(fleet_db, "SELECT seq FROM readings WHERE agent = 'm1' AND stream = 'temp' ORDER BY seq")]
    assert seqs == [*range(0, 17), *range(20, 25), 30, 31]
    hist = q(fleet_db, "SELECT seq FROM readings WHERE historical ORDER BY seq")
    assert [s for (s,) in hist] == list(range(20, 25))
    assert q(fleet_db, "SELECT value, unit, quality, ts FROM readings WHERE stream = 'temp' AND seq = 3")[0][:3] \
        == (0.3, "degC", "good")
    assert q(fleet_db, "SELECT features->'x'->>'zone', n, rate_hz FROM features") == [("B", 250, 1000.0)]
    assert q(fleet_db, "SELECT agent, stream, first_seq, last_seq FROM holes") == [("m1", "temp", 17, 19)]
    assert q(fleet_db, "SELECT stream, first_seq, last_seq, reason FROM gaps") == [("temp", 25, 29, "purged")]
    assert q(fleet_db, "SELECT max_seq, watermark, records FROM streams WHERE stream = 'temp'") == [(31, 16, 24)]
    rej = q(fleet_db, "SELECT topic, reason FROM rejected")
    assert rej[0][0] == "edge/m1/reading/temp" and "not JSON" in rej[0][1]
    assert q(fleet_db, "SELECT status, version FROM agents") == [("online", "9.9")]

    assert main(["fleet", "gaps", "--db", fleet_db]) == 0
    out = capsys.readouterr().out
    assert "m1  temp  seq 17-19 (3)  missing, no gap event" in out
    assert "m1  temp  seq 25-29 (5)  dropped by the agent: purged (gap event outbox seq 0" in out
    assert main(["fleet", "gaps", "--db", fleet_db, "--open", "--check"]) == 1
    assert "dropped by the agent" not in capsys.readouterr().out
    assert main(["fleet", "status", "--db", fleet_db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["AGENT", "STATUS", "LAST"]
    line = out[1]
    assert line.startswith("m1") and " online " in line and "1 (3 seqs)" in line
    assert "vib zone C" in line and "run running" in line


def test_a_late_gap_event_closes_the_hole_it_explains(tmp_path: Path, fleet_db: str) -> None:
    """Two ingest processes sharing the subscription; the records after a drop arrive before its gap event."""
    b = MosquittoBroker(tmp_path, persistent=True).start()
    r1 = Running(b.port, fleet_db, group="g", client_id="ingest-a")
    r2 = Running(b.port, fleet_db, group="g", client_id="ingest-b")
    pub = Publisher(b.port)
    try:
        for s in range(0, 100, 5):
            if s != 50:
                pub.send("m2", [rec("p", x) for x in range(s, s + 5)])
        assert wait(lambda: q(fleet_db, "SELECT count(*) FROM readings") == [(95,)], 30)
        with psycopg.connect(fleet_db) as c:
            fold(c, wait=True)
        assert q(fleet_db, "SELECT first_seq, last_seq FROM holes") == [(50, 54)]
        pub.send("m2", [rec("outbox", 0, "event", event="gap", reason="outbox_full", gap_stream="p",
                            ranges=[[50, 54]], count=5)])
        assert wait(lambda: q(fleet_db, "SELECT watermark FROM streams WHERE stream = 'p'") == [(99,)], 30)
        assert q(fleet_db, "SELECT * FROM holes") == []
        # both processes got a share of the load
        assert r1.ingest.stats.records > 0 and r2.ingest.stats.records > 0
    finally:
        r1.stop()
        r2.stop()
        pub.close()
        b.stop()


def test_a_retired_member_leaves_the_group_without_losing_its_share(tmp_path: Path, fleet_db: str) -> None:
    """A member that is gone keeps its share queued in its session; `--leave` stores that share and ends the
    session, so the rest of the group gets everything afterwards."""
    b = MosquittoBroker(tmp_path, persistent=True).start()
    r1 = Running(b.port, fleet_db, group="g", client_id="stay")
    r2 = Running(b.port, fleet_db, group="g", client_id="gone")
    r2.stop()  # disconnects, keeping its session: it still takes a share of the group's messages
    pub = Publisher(b.port)
    try:
        for s in range(0, 40, 2):
            pub.send("m3", [rec("p", s), rec("p", s + 1)])
        assert wait(lambda: r1.ingest.stats.messages >= 5, 30)
        time.sleep(1.0)  # the rest of its share
        n1 = r1.ingest.stats.messages
        assert n1 < 20, "the departed member's session should have taken part of the load"
        leaver = Ingest(f"mqtt://127.0.0.1:{b.port}", fleet_db, group="g", client_id="gone", leave=True,
                        batch_ms=20)
        assert leaver.run(duration_s=60) == 0
        assert leaver.stats.messages == 20 - n1
        for s in range(40, 60, 2):
            pub.send("m3", [rec("p", s), rec("p", s + 1)])
        assert wait(lambda: r1.ingest.stats.messages == n1 + 10, 30), r1.ingest.stats
        assert q(fleet_db, "SELECT count(DISTINCT seq) FROM readings") == [(60,)]
    finally:
        r1.stop()
        pub.close()
        b.stop()


def test_a_value_postgresql_refuses_rejects_only_its_message(tmp_path: Path, fleet_db: str) -> None:
    b = MosquittoBroker(tmp_path).start()
    run = Running(b.port, fleet_db, group="", client_id="solo")  # --group '': a plain subscription
    pub = Publisher(b.port)
    try:
        run.ingest.batch_s = 1.0  # both messages in one transaction
        pub.send("m4", [rec("t", 0)])
        pub.send("m4", [rec("t", 1, unit="a\u0000b", value=1.0)])  # text with NUL: PostgreSQL refuses it
        pub.send("m4", [rec("t", 2)])
        assert wait(lambda: run.ingest.stats.messages == 3, 30), run.ingest.stats
    finally:
        run.stop()
        pub.close()
        b.stop()
    assert q(fleet_db, "SELECT seq FROM readings ORDER BY seq") == [(0,), (2,)]
    (topic, reason), = q(fleet_db, "SELECT topic, reason FROM rejected")
    assert topic == "edge/m4/reading/t" and "PostgreSQL refused it" in reason
    assert run.ingest.stats.rejected == 1
