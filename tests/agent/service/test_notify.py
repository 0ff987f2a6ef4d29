"""sd_notify spoken to a real NOTIFY_SOCKET datagram socket: readiness, watchdog only while every stage makes
progress (a wedged reader stops the pings), STATUS with outbox depth and link state, reload and stop."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import hal.sources
from agent.service import Notifier, Service
from tests.agent_helpers import run_agent
from tests.agent.service.helpers import (STALLING_DRIVER, STALLING_TARGET, NotifyListener, controls, service_config,
                                   tick_until, wait)


@pytest.fixture
def listener(tmp_path: Path):
    lst = NotifyListener(tmp_path / "notify.sock")
    yield lst
    lst.close()


def test_notifier_sends_one_datagram_per_message_to_a_path_socket(listener: NotifyListener) -> None:
    n = Notifier(listener.env())
    assert n.send("READY=1", "STATUS=up")
    assert n.send("WATCHDOG=1")
    assert listener.drain() == [{"READY": "1", "STATUS": "up"}, {"WATCHDOG": "1"}]


def test_notifier_reaches_an_abstract_namespace_socket() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    lst = NotifyListener(abstract=name)
    try:
        assert Notifier(lst.env()).send("READY=1")
        assert lst.drain() == [{"READY": "1"}]
    finally:
        lst.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    n = Notifier({})
    assert not n.enabled and n.send("READY=1") is False and n.watchdog_usec == 0


def test_watchdog_settings_are_validated(listener: NotifyListener, caplog: pytest.LogCaptureFixture) -> None:
    assert Notifier(listener.env(WATCHDOG_USEC="30000000")).watchdog_usec == 30_000_000
    assert Notifier(listener.env(WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getpid()))).watchdog_usec == 30_000_000
    with caplog.at_level(logging.INFO, "edge_agent.service"):
        assert Notifier(listener.env(WATCHDOG_USEC="soon")).watchdog_usec == 0
        assert Notifier(listener.env(WATCHDOG_USEC="-5")).watchdog_usec == 0
        assert Notifier(listener.env(WATCHDOG_USEC="30000000", WATCHDOG_PID="1")).watchdog_usec == 0
    text = caplog.text
    assert "WATCHDOG_USEC='soon' is not a positive integer" in text and "WATCHDOG_PID=1 is not this process" in text


def test_a_vanished_notify_socket_is_reported_once_and_does_not_raise(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.ERROR, "edge_agent.service"):
        assert n.send("WATCHDOG=1") is False
        assert n.send("WATCHDOG=1") is False
    assert caplog.text.count("cannot notify systemd") == 1


def test_ready_watchdog_stall_recovery_reload_and_stop(broker, listener: NotifyListener, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader whose driver hangs in read_block stops the WATCHDOG pings; when it comes back, they resume."""
    monkeypatch.setitem(hal.sources.DRIVERS, STALLING_DRIVER, STALLING_TARGET)
    hang, release = controls("stuck")
    hang.clear(), release.clear()
    agent = run_agent(service_config(broker.port, stalling=True), tmp_path / "state")
    # watchdog 4 s: a stage is stuck after 2 s without progress (tests shorten the production minimum of 5 s)
    service = Service(agent, environ=listener.env(WATCHDOG_USEC="4000000"), min_stall_s=1.0, reader_grace_s=0.0)
    try:
        assert service.stall_limit_s == 2.0
        service.ready()
        first = listener.drain()
        assert first[0]["READY"] == "1"
        assert "3 sensors; outbox" in first[0]["STATUS"]
        # every stage makes progress: each tick pings
        assert tick_until(service, listener, lambda m: m.get("WATCHDOG") == "1")
        assert wait(lambda: agent.stats.get("link") == "up")
        up = tick_until(service, listener, lambda m: "link up" in m.get("STATUS", ""))
        assert up and f"(mqtt://127.0.0.1:{broker.port})" in up["STATUS"]

        hang.set()  # the driver wedges inside read_block
        stalled = tick_until(service, listener, lambda m: "STALLED" in m.get("STATUS", ""))
        assert stalled is not None and "WATCHDOG" not in stalled
        assert stalled["STATUS"].startswith("STALLED: reader.stuck;")
        assert service.stalled() == ["reader.stuck"]  # only the wedged stage, not its neighbours
        for _ in range(5):  # no ping while it stays wedged
            service.tick()
            assert all("WATCHDOG" not in m for m in listener.drain())

        hang.clear()
        release.set()  # the read returns: progress again, pings again
        assert tick_until(service, listener, lambda m: m.get("WATCHDOG") == "1")
        assert service.stalled() == []

        service.reloading()
        assert listener.drain()[-1]["RELOADING"] == "1"
        service.reloaded(False, "agent.toml: sensors[0].rate_hz: expected a positive number, got -5")
        msg = listener.drain()[-1]
        assert msg["READY"] == "1" and msg["STATUS"].startswith("reload rejected, running the previous configuration")

        service.stopping()
        assert listener.drain()[-1] == {"STOPPING": "1", "STATUS": "stopping: flushing the outbox"}
    finally:
        release.set()
        service.stopping()
        agent.stop(drain_s=0.5)


def test_reload_ok_sends_monotonic_usec_then_ready(broker, listener: NotifyListener, tmp_path: Path) -> None:
    agent = run_agent(service_config(broker.port), tmp_path / "state")
    service = Service(agent, environ=listener.env())
    try:
        service.ready()
        listener.drain()
        service.reloading()
        service.reloaded(True, "2 sensors")
        reloading, ready = listener.drain()
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert ready["READY"] == "1" and ready["STATUS"].startswith("reloaded: 2 sensors;")
    finally:
        service.stopping()
        agent.stop(drain_s=0.5)


def test_a_slow_sensor_waiting_for_its_interval_is_not_stalled(broker, listener: NotifyListener,
                                                               tmp_path: Path) -> None:
    """A probe read every 30 s waits 30 s between loops on purpose: with a 2 s stall limit it must not count."""
    raw_cfg = service_config(broker.port)
    import dataclasses
    slow = dataclasses.replace(raw_cfg.sensors[1], interval_s=30.0)
    agent = run_agent(dataclasses.replace(raw_cfg, sensors=(raw_cfg.sensors[0], slow)), tmp_path / "state")
    service = Service(agent, environ=listener.env(WATCHDOG_USEC="4000000"), min_stall_s=1.0, reader_grace_s=0.0)
    try:
        service.ready()
        # the base limit sees the probe's reader as old, the service's allowance does not
        assert wait(lambda: "reader.temp" in agent.stats.stalled(2.0), 15)
        assert service.stalled() == []
        assert tick_until(service, listener, lambda m: m.get("WATCHDOG") == "1")
    finally:
        service.stopping()
        agent.stop(drain_s=0.5)


def test_a_broker_outage_is_not_a_stall(listener: NotifyListener, tmp_path: Path) -> None:
    """No broker: the uplink sleeps through its reconnect back-off (here 3 s) longer than the stall limit (here
    1 s); that is waiting, not being stuck, so the pings go on and systemd does not restart the agent."""
    from tests.mqtt_helpers import free_port
    cfg = service_config(free_port(), mqtt_overrides={"reconnect_min_s": 3.0, "reconnect_max_s": 3.0})
    agent = run_agent(cfg, tmp_path / "state")
    service = Service(agent, environ=listener.env(WATCHDOG_USEC="2000000"), min_stall_s=0.5, reader_grace_s=0.0)
    try:
        service.ready()
        assert service.stall_limit_s == 1.0
        # the uplink reports progress while it waits out its back-off, so it never looks stuck ...
        assert wait(lambda: agent.stats.get("uplink_connect_failures") >= 2, 20)
        assert "uplink" not in agent.stats.stalled(1.0)
        assert "uplink" not in service.stalled()  # ... and the service's allowance covers a blocking connect
        assert tick_until(service, listener, lambda m: m.get("WATCHDOG") == "1")
    finally:
        service.stopping()
        agent.stop(drain_s=0.1)


def test_a_sensor_removed_by_a_reload_is_not_a_stall(broker, listener: NotifyListener, tmp_path: Path) -> None:
    """After a reload drops `temp`, its reader's last progress stays in the stats: gone, not stuck."""
    agent = run_agent(service_config(broker.port), tmp_path / "state")
    service = Service(agent, environ=listener.env(WATCHDOG_USEC="2000000"), min_stall_s=0.5, reader_grace_s=0.0)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nid = "svc"\n[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
                   '[[sensors]]\nname = "vib"\ndriver = "emulated.vibration"\nrate_hz = 1000\nblock_size = 125\n'
                   'window = 250\n')
    try:
        service.ready()
        service.reloading()
        ok, message = agent.reload(str(cfg))
        service.reloaded(ok, message)
        assert ok, message
        assert wait(lambda: "reader.temp" in agent.stats.stalled(1.0), 20)
        assert "reader.temp" not in service.stalled()
        assert "reader.temp" not in service.status_document()["stages"]
        assert "reader.temp" not in service.health_payload()["stage_lag_s"]
        assert tick_until(service, listener, lambda m: m.get("WATCHDOG") == "1")
    finally:
        service.stopping()
        agent.stop(drain_s=0.5)
