"""End to end with real parts: emulated sensors → windows → Numba kernel → SQLite outbox → Mosquitto → subscriber."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.pipeline import Pipeline
from tests.agent_helpers import run_agent, small_config, wait
from tests.mqtt_helpers import MosquittoBroker, by_stream, free_port

pytestmark = pytest.mark.slow  # whole agents against a broker, restarts


def _assert_contract(rec: dict, agent_id: str) -> None:
    assert rec["agent"] == agent_id
    assert isinstance(rec["seq"], int) and rec["seq"] >= 0
    assert rec["quality"] in ("good", "uncertain", "bad")
    assert rec["ts"].endswith("Z")
    datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")


def test_records_reach_the_broker_with_the_wire_contract(broker, subscriber_factory, tmp_path: Path) -> None:
    sub = subscriber_factory(broker.port)
    agent = run_agent(small_config(broker.port), tmp_path / "state")
    try:
        assert sub.wait_for(lambda s: sum(1 for r in s.records() if r["stream"] == "vib") >= 6
                            and sum(1 for r in s.records() if r["stream"] == "temp") >= 10)
    finally:
        agent.stop()
    msgs = sub.snapshot()
    data = [m for m in msgs if not m.topic.endswith("/status")]
    for m in data:
        rec = m.json()
        _assert_contract(rec, "t1")
        kind = "features" if rec["stream"] == "vib" else "reading"
        assert m.topic == f"edge/t1/{kind}/{rec['stream']}"
    seqs = by_stream([m.json() for m in data])
    for stream, s in seqs.items():
        assert s == list(range(len(s))), f"{stream}: {s}"  # from 0, increasing, no gaps, no duplicates
    vib = next(m.json() for m in data if m.json()["stream"] == "vib")
    assert vib["n"] == 250 and vib["rate_hz"] == 1000.0 and vib["unit"] == "m/s2"
    # the emulated plant (a healthy machine): 0.35 m/s² imbalance + 0.15 misalignment + 0.15 noise → RMS ≈ 0.31 m/s²
    for axis in ("x", "y"):
        assert 0.22 < vib["features"][axis]["rms"] < 0.42
        assert vib["features"][axis]["peak"] >= vib["features"][axis]["rms"]
    temp = next(m.json() for m in data if m.json()["stream"] == "temp")
    assert temp["unit"] == "degC" and 30 < temp["value"] < 50
    status = [m for m in msgs if m.topic == "edge/t1/status"]
    assert status[0].json()["status"] == "online" and status[0].json()["version"]
    assert status[-1].json() == {"agent": "t1", "status": "offline"}


def test_birth_is_retained_and_last_will_says_offline(broker, subscriber_factory, tmp_path: Path) -> None:
    """The agent process dies without a word: the broker publishes the retained `offline` Last Will."""
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--emulate", "--broker", broker.url,
                             "--state-dir", str(tmp_path / "state")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        late = None
        first = subscriber_factory(broker.port, "edge/demo/status")
        assert first.wait_for(lambda s: any(m.json()["status"] == "online" for m in s.snapshot()), 30)
        # a subscriber arriving later still sees the retained birth
        late = subscriber_factory(broker.port, "edge/demo/status")
        assert late.wait_for(lambda s: any(m.retain and m.json()["status"] == "online" for m in s.snapshot()))
        proc.kill()
        proc.wait(10)
        assert first.wait_for(lambda s: s.snapshot()[-1].json()["status"] == "offline", 30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_run_emulate_publishes_and_exits_cleanly_on_sigterm(broker, subscriber_factory, tmp_path: Path) -> None:
    sub = subscriber_factory(broker.port)
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--emulate", "--broker", broker.url,
                             "--state-dir", str(tmp_path / "state")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert sub.wait_for(lambda s: {"spindle_vibration", "bearing.temperature"} <= set(by_stream(s.records())),
                            60)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert sub.wait_for(lambda s: s.snapshot()[-1].topic == "edge/demo/status"
                        and s.snapshot()[-1].json()["status"] == "offline")
    for stream, seqs in by_stream(sub.records()).items():
        assert seqs == sorted(set(seqs)), stream


def test_broker_down_at_start_buffers_then_drains_in_order_none_twice(subscriber_factory, tmp_path: Path) -> None:
    port = free_port()
    # the consumer's session outlives the broker's downtime (persistent broker and session), so whatever the
    # agent publishes the moment the broker is back reaches it, however late the consumer reconnects
    b = MosquittoBroker(tmp_path, port, persistent=True).start()
    sub = subscriber_factory(port, persistent=True)
    b.stop()
    agent = run_agent(small_config(port), tmp_path / "state")
    try:
        assert wait(lambda: agent.outbox.depth >= 30, 30), "the agent must keep acquiring with no broker"
        assert agent.stats.get("uplink_connect_failures") >= 1
        b.start()
        # everything buffered plus what is produced meanwhile arrives: seq 0..N per stream with no holes
        assert sub.wait_for(lambda s: all(len(v) >= 20 for v in by_stream(s.records()).values())
                            and len(by_stream(s.records())) == 2, 30)
        time.sleep(0.5)
    finally:
        agent.stop(drain_s=15)  # generous: on a loaded machine the last records need a moment
        stopped_depth = agent.outbox.depth
    sub.wait_for(lambda s: s.snapshot()[-1].topic.endswith("/status"), 30)  # the offline status comes last
    records = sub.records()
    seqs = by_stream(records)
    for stream, s in seqs.items():
        assert sorted(s) == list(range(len(s))), f"{stream}: duplicated or missing: {s}"
        # the backlog (historical) shares the in-flight window with live data (mqtt.live_share), so a live record
        # committed after the reconnect may overtake the tail of the backlog; within each, order is kept
        for historical in (True, False):
            part = [r["seq"] for r in records if r["stream"] == stream and bool(r.get("historical")) == historical]
            assert part == sorted(part), f"{stream}: {'backlog' if historical else 'live'} out of order: {part}"
    assert any(r.get("historical") for r in records), "the buffered backlog is marked historical"
    assert stopped_depth == 0
    b.stop()


def test_seq_continues_across_restarts(broker, subscriber_factory, tmp_path: Path) -> None:
    sub = subscriber_factory(broker.port)
    state = tmp_path / "state"
    for _ in range(3):
        agent = run_agent(small_config(broker.port), state)
        before = {k: len(v) for k, v in by_stream(sub.records()).items()}
        # each run publishes something on both streams
        assert sub.wait_for(lambda s: all(len(v) > before.get(k, 0) for k, v in by_stream(s.records()).items())
                            and len(by_stream(s.records())) == 2, 60)
        agent.stop(drain_s=15)
    seqs = by_stream(sub.records())
    for stream, s in seqs.items():
        assert s == list(range(len(s))), f"{stream} restarted its sequence: {s}"
        assert len(s) >= 3


def _gated_loader(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The real kernel loader, held back until `.gate` is set: a slow (cold-cache) kernel load."""
    import threading

    from agent import pipeline, processing

    class GatedLoader(processing.KernelLoader):
        def __init__(self) -> None:
            super().__init__()
            self.gate = threading.Event()

        def _load(self) -> None:
            assert self.gate.wait(60)
            super()._load()

    loader = GatedLoader()
    monkeypatch.setattr(processing, "KERNELS", loader)
    monkeypatch.setattr(pipeline, "KERNELS", loader)
    return loader


def test_stream_sensors_are_read_while_the_kernels_load_and_their_windows_computed_once_ready(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loader = _gated_loader(monkeypatch)
    agent = run_agent(small_config(free_port()), tmp_path / "state")  # no broker needed: the outbox keeps records
    try:
        assert wait(lambda: agent.stats.get("reads.temp") >= 3, 30)  # slow sensors run while the kernels load
        # the accelerometer too: its first windows fill meanwhile and wait for the kernels
        vib = agent.processors["vib"]
        assert wait(lambda: len(vib._pending) >= 2, 60)  # type: ignore[attr-defined]
        assert vib.windows == 0  # type: ignore[attr-defined]
        waiting = len(vib._pending)  # type: ignore[attr-defined]
        loader.gate.set()
        assert wait(lambda: vib.windows >= waiting, 60)  # type: ignore[attr-defined]
        assert agent.stats.get("processing_errors.vib") == 0
    finally:
        agent.stop(drain_s=0)
    rows = sqlite3.connect(tmp_path / "state" / "outbox.db").execute(
        "SELECT seq, ts_ns FROM records WHERE stream = 'vib' ORDER BY seq").fetchall()
    assert len(rows) >= waiting and [r[0] for r in rows] == list(range(len(rows)))
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)  # the windows that waited, in order


def test_acquire_early_reads_stream_sensors_before_start_and_loses_nothing_at_start(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loader = _gated_loader(monkeypatch)
    agent = Pipeline(small_config(free_port()), tmp_path / "state", acquire_early=True)
    try:
        # read from construction on (blocks queue up for processing); slow sensors wait for start()
        assert wait(lambda: agent.stats.get("samples.vib") >= 250, 60)
        assert agent.stats.get("reads.temp") == 0
        agent.start()
        assert wait(lambda: agent.stats.get("reads.temp") >= 1, 30)
        loader.gate.set()
        assert wait(lambda: agent.processors["vib"].windows >= 2, 60)  # type: ignore[attr-defined]
        assert sum(r.is_alive() for r in agent.readers) == 2  # each reader started once
    finally:
        agent.stop(drain_s=0)
    first = sqlite3.connect(tmp_path / "state" / "outbox.db").execute(
        "SELECT payload FROM records WHERE stream = 'vib' ORDER BY seq LIMIT 1").fetchone()
    assert first is not None and "gap_before" not in json.loads(first[0])  # the first window is contiguous


def test_acquire_early_stops_the_readers_it_started_when_a_later_driver_fails(monkeypatch: pytest.MonkeyPatch,
                                                                               tmp_path: Path) -> None:
    import threading

    from agent import pipeline
    from agent.errors import StartError

    real_open = pipeline.open_source

    def open_source(driver: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "temp":  # the slow sensor's device cannot be opened (built after the stream sensor)
            raise OSError(19, "No such device")
        return real_open(driver, name, *args, **kwargs)

    monkeypatch.setattr(pipeline, "open_source", open_source)
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(StartError, match="'temp'.*No such device"):
        Pipeline(small_config(free_port()), tmp_path / "state", acquire_early=True)
    assert "reader-vib" not in {t.name for t in threading.enumerate()} - before  # started, then stopped
