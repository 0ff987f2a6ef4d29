"""Scenario files and the runner, against real emulated buses (an I2C chip model, a pymodbus TCP server) on an
accelerated clock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hal.clock import ManualClock, ScaledClock
from hal.emulated.plant import Plant
from hal.emulated.scenario import ScenarioError, ScenarioRunner, load, names, parse, parse_duration
from hal.sources import HalContext, open_source
from tests.agent_helpers import wait


def test_every_shipped_scenario_loads() -> None:
    assert {"demo", "bearing-wear", "shift", "faults"} <= set(names())
    for name in names():
        s = load(name)
        assert s.name == name and s.events
    assert load("bearing-wear").events[0].at_s == 600.0  # "10m"


def test_a_scenario_file_by_path(tmp_path: Path) -> None:
    f = tmp_path / "mine.toml"
    f.write_text('start = "run"\n[[events]]\nat = "1h30m"\naction = "stop"\nfor = "2.5m"\n')
    s = load(str(f))
    assert s.name == "mine" and s.events[0].at_s == 5400 and s.events[0].for_s == 150 and s.end_s == 5550


def test_errors_name_the_file_the_key_path_and_what_was_expected() -> None:
    with pytest.raises(ScenarioError) as e:
        parse({"start": "sometimes", "plant": {"imbalance_ms2": "x"}, "duty": {"off_s": -1},
               "events": [{"at": "soon", "action": "stop"}, {"action": "explode"},
                          {"action": "i2c_nack", "address": "0x53"}, {"action": "bearing_fault", "for": 10}]},
              "bad.toml")
    msg = str(e.value)
    for part in ("bad.toml: start: expected cycle, run, idle or off, got 'sometimes'",
                 "bad.toml: plant.imbalance_ms2: expected a number",
                 "bad.toml: duty.off_s: expected a number >= 0, got -1",
                 "bad.toml: events[0].at: expected seconds or a duration",
                 "bad.toml: events[1].action: expected one of",
                 "bad.toml: events[2].address: expected an integer",
                 "bad.toml: events[3].for: action bearing_fault does not take a duration"):
        assert part in msg, part
    with pytest.raises(ScenarioError, match="expected a shipped scenario .*demo"):
        load("no-such-scenario")
    with pytest.raises(ValueError):
        parse_duration("10 parsecs")


def test_the_runner_injects_faults_on_the_emulated_buses_and_they_clear(tmp_path: Path) -> None:
    """On virtual time (ManualClock): the test's polls step plant time 0.25 s at a time and the runner acts at its
    exact plant times, however slow the machine (the Modbus timeout is real time: generous, it never moves plant
    time)."""
    clock = ManualClock()
    plant = Plant(clock=clock)
    ctx = HalContext(emulate=True, plant=plant, clock=clock, buses={
        "i2c1": {"type": "i2c"}, "meter": {"type": "modbus_tcp", "timeout_s": 2.0}})
    bme = open_source("bme280", "cab", {"address": 0x76}, ctx, bus="i2c1")
    meter = open_source("modbus", "energy", {"unit": 1, "profile": "sdm630", "include": ["power_total"],
                                             "backoff_min_s": 0.5, "backoff_max_s": 1.0}, ctx, bus="meter")
    outages: list[bool] = []
    scenario = parse({"start": "run", "events": [
        {"at": 1, "action": "broker_outage", "for": 1},
        {"at": 2, "action": "i2c_nack", "address": 0x76, "for": 6},
        {"at": 2, "action": "modbus_silent", "bus": "meter", "for": 6},
        {"at": 3, "action": "sensornode_unplug"},  # no sensor node here: reported, the run goes on
    ]}, "t.toml")
    runner = ScenarioRunner(scenario, plant, ctx, {"broker_outage": outages.append})
    try:
        bme.open()
        meter.open()
        readings = []
        runner.start()
        assert wait(lambda: clock.parked() == 1)  # the runner waits for its first step before time moves
        stop = threading.Event()
        while runner.elapsed() < 12.0:
            for r in bme.poll() + meter.poll():
                readings.append((plant.t(r.ts_ns) - runner.t0, r))
            clock.wait(stop, 0.25)
        assert runner.done.wait(5)
    finally:
        runner.stop()
        ctx.close()
    assert outages == [True, False]
    results = {label: result for _, label, result in runner.log}
    assert runner.errors == 1 and results["sensornode_unplug"].startswith("LookupError: no emulated sensor node")
    assert [results[k] for k in results if k != "sensornode_unplug"] == ["ok"] * 6
    for channel in ("cab.temperature", "energy.power_total"):
        seen = [(t, r.quality.value) for t, r in readings if r.channel == channel]
        assert all(q == "good" for t, q in seen if t < 1.9), (channel, seen)
        assert any(q == "bad" for t, q in seen if 2.1 <= t < 7.9), (channel, seen)
        assert all(q == "good" for t, q in seen if t > 10.5), (channel, seen)  # back-off is at most 1 s
        assert seen[-1][1] == "good", (channel, seen)
    assert any("no acknowledge" in (r.error or "") for _, r in readings if r.channel == "cab.temperature")


def test_a_hook_that_is_missing_is_an_error_in_the_log_not_an_exception() -> None:
    clock = ScaledClock(50.0)
    plant = Plant(clock=clock)
    runner = ScenarioRunner(parse({"events": [{"at": 0.5, "action": "broker_outage", "for": 0.5},
                                              {"at": 2, "action": "bearing_fault", "grow_s": 10}]}, "t.toml"),
                            plant, HalContext(plant=plant, clock=clock)).start()
    assert runner.done.wait(5)
    results = {label: result for _, label, result in runner.log}
    assert "the agent does not own the broker" in results["broker_outage"]
    assert results["bearing_fault(grow_s=10, severity=1.0)"] == "ok" and runner.errors == 2
    assert plant.fault_severity(plant.now() + 20) == 1.0


def test_a_usb_sensor_node_unplugged_by_the_scenario_is_found_again() -> None:
    """Real time (the node's emulator runs on it): the firmware on a pty, unplugged for 1.5 s, then re-enumerated."""
    plant = Plant()
    ctx = HalContext(emulate=True, plant=plant)
    node = open_source("sensornode", "fan_end", {"rate_hz": 1000, "block_size": 100}, ctx)
    runner = ScenarioRunner(parse({"start": "run", "events": [
        {"at": 1.0, "action": "sensornode_unplug", "sensor": "fan_end", "for": 1.5}]}, "t.toml"), plant, ctx)
    blocks = []
    try:
        node.open()
        runner.start()
        deadline = time.monotonic() + 30  # a bound on a hang, not a timed assertion
        while time.monotonic() < deadline and not (runner.done.is_set() and len(blocks) > 5
                                                   and plant.t(blocks[-1].t0_ns) - runner.t0 > 3.5):
            b = node.read_block(0.5)
            if b is not None:
                blocks.append(b)
    finally:
        runner.stop()
        node.close()
        ctx.close()
    assert [result for _, _, result in runner.log] == ["ok", "ok"]
    assert node.counters["link_faults"] >= 1 and node.counters["reconnects"] >= 1, node.counters
    before = [b for b in blocks if plant.t(b.t0_ns) - runner.t0 < 0.9]
    after = [b for b in blocks if plant.t(b.t0_ns) - runner.t0 > 2.6]
    assert before and after
    gaps = [b for b in blocks if b.gap]  # the time without the node is one gap, never glued over
    assert len(gaps) == 1 and gaps[0].gap >= 1.5 * 1000 and plant.t(gaps[0].t0_ns) - runner.t0 >= 2.5, gaps
