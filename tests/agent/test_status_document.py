"""agent/status.py: the live document (the running service) and the offline one (the outbox alone) have one shape,
so `edge-agent status`, doctor and a script read both the same way. A real pipeline, a real outbox on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.outbox import OutboxUnreadable, OutboxView
from agent.service import Service
from agent.status import last_value, offline_document
from tests.agent_helpers import run_agent
from tests.mqtt_helpers import free_port
from tests.agent.service.helpers import service_config, wait


def test_live_and_offline_documents_share_their_keys(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = service_config(free_port())  # no broker: the records stay in the outbox
    agent = run_agent(config, state)
    service = Service(agent, status_socket=None, environ={})
    try:
        assert wait(lambda: agent.outbox.depth >= 10 and len(service.tap.streams()) >= 2)
        live = service.status_document()
    finally:
        agent.stop(drain_s=0.1)
    offline = offline_document(state, config)
    assert (live["source"], offline["source"]) == ("service", "outbox")
    shared = {"source", "agent", "config", "state_dir", "link", "outbox", "sensors", "other_streams", "gaps"}
    assert shared <= set(live) and shared <= set(offline)
    assert set(offline["outbox"]) <= set(live["outbox"])
    for lv, off in zip(live["sensors"], offline["sensors"], strict=True):
        assert lv["name"] == off["name"] and set(off) <= set(lv), (off, lv)
        assert off["rate_hz"] is None and off["errors"] is None  # unknown offline: None, never missing
        for name, entry in off["streams"].items():
            assert set(entry) == set(lv["streams"][name]) == {"kind", "last", "age_s", "rate_hz"}
            assert set(entry["last"]) == set(lv["streams"][name]["last"])  # one summary of a last record
    assert offline["outbox"]["depth"] == agent.outbox.depth


def test_last_value_summarises_each_kind_once() -> None:
    assert last_value("reading", 0, "bad", {"value": None, "unit": "degC", "error": "no ack"}) == {
        "ts": "1970-01-01T00:00:00.000Z", "quality": "bad", "value": None, "unit": "degC", "error": "no ack"}
    assert last_value("features", 0, "good", {"features": {"x": {"rms": 1.0}}, "unit": "m/s2"})["features"] == {
        "x": {"rms": 1.0}}
    assert last_value("event", 0, "good", {"event": "gap", "count": 3})["payload"] == {"event": "gap", "count": 3}


def test_the_offline_document_names_a_missing_outbox(tmp_path: Path) -> None:
    with pytest.raises(OutboxUnreadable) as e:
        offline_document(tmp_path / "nowhere", None)
    assert str(tmp_path / "nowhere" / "outbox.db") in str(e.value) and "--state-dir" in str(e.value)


def test_a_file_that_is_not_an_outbox_is_named(tmp_path: Path) -> None:
    import sqlite3
    tmp_path.joinpath("outbox.db").touch()
    sqlite3.connect(tmp_path / "outbox.db").execute("CREATE TABLE other (x)").connection.close()
    with pytest.raises(OutboxUnreadable, match="is not an edge-agent outbox"):
        OutboxView.open(tmp_path)
