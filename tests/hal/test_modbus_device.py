"""The modbus driver against pymodbus servers (the emulator) over TCP and over a pty pair (RTU): values, word order,
coalescing (counted requests), and every fault with its recovery. Time is faked for back-off; no timed asserts."""

from __future__ import annotations

import pytest

from hal.emulated.plant import Plant
from hal.modbus.client import crc16
from hal.sources import open_source
from hal.types import Quality

TRANSPORTS = ["modbus_tcp", "modbus_rtu"]


def by_channel(readings):
    return {r.channel: r for r in readings}


@pytest.fixture
def plant() -> Plant:
    return Plant(seed=3)


def open_devices(make_context, plant, transport, *specs, timeout=0.2):
    ctx = make_context({"line": {"type": transport, "backend": "emulated", "timeout_s": timeout}}, plant=plant)
    devs = []
    for name, options in specs:
        d = open_source("modbus", name, options, ctx, bus="line")
        d.open()
        devs.append(d)
    server = ctx.shared("modbus-emulator:line", None)
    return ctx, server, devs


def test_crc16_matches_the_modbus_specification_example():
    # Modbus over serial line V1.02, 6.2.2: read holding registers, slave 1, address 0, 1 register
    assert crc16(bytes.fromhex("010300000001")) == bytes.fromhex("840a")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_profiles_read_engineering_values_from_the_plant(make_context, plant, transport):
    ctx, server, (meter, vfd) = open_devices(make_context, plant, transport, ("meter", {"profile": "sdm630"}),
                                             ("vfd", {"profile": "eaton_mmax", "unit": 2}))
    m = by_channel(meter.poll())
    v = by_channel(vfd.poll())
    assert len(m) == 17 and all(r.quality is Quality.GOOD for r in m.values())
    assert m["meter.voltage_l1"].unit == "V" and m["meter.voltage_l1"].value == pytest.approx(230, abs=3)
    assert m["meter.current_l2"].value == pytest.approx(plant.load_current_a, rel=0.05)
    assert m["meter.frequency"].value == pytest.approx(50, abs=0.1)
    assert m["meter.energy_total"].value == pytest.approx(plant.energy_start_kwh, rel=1e-3)
    assert v["vfd.motor_speed"].value == 1485 and v["vfd.motor_speed"].unit == "rpm"
    assert v["vfd.motor_voltage"].value == pytest.approx(398.0)  # 3980 x 0.1 V
    assert v["vfd.running"].value is True and v["vfd.fault"].value is False
    plant.set_running(False)
    v = by_channel(vfd.poll())
    assert v["vfd.running"].value is False and v["vfd.motor_speed"].value == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reads_are_coalesced_into_the_planned_requests(make_context, plant, transport):
    regs = [{"name": f"r{i}", "table": "input", "address": a, "type": "u16", "emulate_value": a}
            for i, a in enumerate([0, 1, 2, 3, 6, 7, 40, 41, 300])]
    ctx, server, (dev, wide) = open_devices(make_context, plant, transport, ("dev", {"registers": regs, "unit": 5}),
                                            ("wide", {"registers": regs, "unit": 6, "max_gap": 40}))
    readings = by_channel(dev.poll())
    assert [readings[f"dev.r{i}"].value for i in range(9)] == [0, 1, 2, 3, 6, 7, 40, 41, 300]
    assert server.requests[5] == 4  # 0-3, 6-7, 40-41, 300
    wide.poll()
    assert server.requests[6] == 2  # 0-41 bridging two gaps, 300
    assert len(wide.plan(list(wide.map))) == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("byte_order,word_order", [("big", "big"), ("big", "little"), ("little", "big"),
                                                   ("little", "little")])
def test_word_order_variants_round_trip_through_the_wire(make_context, plant, transport, byte_order, word_order):
    regs = [{"name": "f", "address": 0, "type": "f32", "emulate_value": -1234.5},
            {"name": "u", "address": 2, "type": "u32", "emulate_value": 0x12345678},
            {"name": "d", "address": 4, "type": "f64", "emulate_value": 3.14159265358979},
            {"name": "s", "address": 8, "type": "string", "length": 3, "emulate_value": "PUMP1"}]
    opts = {"registers": regs, "byte_order": byte_order, "word_order": word_order}
    ctx, server, (dev,) = open_devices(make_context, plant, transport, ("dev", opts))
    r = by_channel(dev.poll())
    assert r["dev.f"].value == -1234.5 and r["dev.u"].value == 0x12345678
    assert r["dev.d"].value == 3.14159265358979 and r["dev.s"].value == "PUMP1"
    assert server.requests[1] == 1


def test_a_reader_with_the_wrong_word_order_sees_a_different_number(make_context, plant):
    """The emulator encodes with the map's order: a map with the other order must not decode the same value."""
    ctx, server, (dev,) = open_devices(
        make_context, plant, "modbus_tcp",
        ("dev", {"registers": [{"name": "u", "address": 0, "type": "u32", "emulate_value": 0x00010002}]}))
    other = open_source("modbus", "other", {"unit": 7, "word_order": "little",
                                            "registers": [{"name": "u", "address": 0, "type": "u32"}]},
                        ctx, bus="line")
    server.add_device(7, dev.map)  # unit 7 really stores the value high word first
    server.set_value(7, "u", 0x00010002)
    assert dev.poll()[0].value == 0x00010002
    assert other.poll()[0].value == 0x00020001


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exception_response_is_bad_counted_and_recovers(make_context, plant, transport):
    ctx, server, (dev,) = open_devices(make_context, plant, transport, ("meter", {"profile": "sdm630"}))
    server.fail_with(1, 2)
    readings = dev.poll()
    assert readings and all(r.quality is Quality.BAD for r in readings)
    assert "exception 2 (illegal data address)" in readings[0].error
    assert dev.counters["exceptions"] == len(dev.plan(list(dev.map)))
    assert not dev.backing_off  # it answered: no back-off
    server.fail_with(1, None)
    assert all(r.quality is Quality.GOOD for r in dev.poll())


def test_reading_an_unmapped_address_is_an_exception_2(make_context, plant):
    ctx = make_context({"line": {"type": "modbus_tcp", "backend": "emulated", "timeout_s": 0.2}}, plant=plant)
    dev = open_source("modbus", "meter", {"profile": "sdm630", "include": ["voltage_l1"]}, ctx, bus="line")
    bus = dev.bus
    dev.poll()
    from hal.errors import DeviceException
    with pytest.raises(DeviceException) as e:
        bus.read("input", 500, 2, 1)
    assert e.value.code == 2 and "unit 1" in str(e.value) and "input 500+2" in str(e.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dead_device_backs_off_without_delaying_its_neighbour(make_context, plant, transport, clock):
    ctx, server, (dead, alive) = open_devices(make_context, plant, transport, ("meter", {"profile": "sdm630"}),
                                              ("vfd", {"profile": "eaton_mmax", "unit": 2}))
    dead._clock = clock
    assert all(r.quality is Quality.GOOD for r in dead.poll())
    server.go_silent(1)
    before = server.requests[1]
    readings = dead.poll()
    assert all(r.quality is Quality.BAD for r in readings)
    assert len(readings) == 14  # the three energy registers are due once a minute only
    assert "no answer within 0.2 s" in readings[0].error
    assert any("skipped" in r.error for r in readings)
    assert dead.counters["timeouts"] == 1 and dead.bus.counters["timeouts"] == 1  # one timeout per cycle at most
    assert server.requests[1] == before + 1
    assert all(r.quality is Quality.GOOD for r in alive.poll())  # the neighbour is read normally
    # backing off: the dead device is not asked at all
    for _ in range(3):
        readings = dead.poll()
        assert all(r.quality is Quality.BAD and "next try in" in r.error for r in readings)
    assert server.requests[1] == before + 1 and dead.counters["skipped"] == 3
    # exponential: 1 s, then 2 s, then 4 s
    delays = []
    for _ in range(3):
        clock.advance(100)
        dead.poll()
        delays.append(dead._retry_at - clock())
    assert delays == [2.0, 4.0, 8.0]
    # it answers again: read in full on the first try after the back-off
    server.answer(1)
    clock.advance(8)
    readings = dead.poll()
    assert all(r.quality is Quality.GOOD for r in readings) and len(readings) == 17
    assert dead.counters["recoveries"] == 1 and not dead.backing_off


def test_backoff_is_capped(make_context, plant, clock):
    ctx, server, (dev,) = open_devices(make_context, plant, "modbus_tcp",
                                       ("m", {"profile": "sdm630", "include": ["frequency"], "backoff_max_s": 5}))
    dev._clock = clock
    server.go_silent(None)
    for _ in range(6):
        clock.advance(100)
        dev.poll()
    assert dev._retry_at - clock() == 5.0 and dev.failures == 6


def test_crc_error_on_rtu_is_bad_counted_and_the_next_answer_is_good(make_context, plant):
    ctx, server, (dev,) = open_devices(make_context, plant, "modbus_rtu",
                                       ("meter", {"profile": "sdm630", "include": ["voltage_l1", "frequency"]}))
    server.corrupt_crc(1, count=1)
    readings = dev.poll()
    bad = [r for r in readings if r.quality is Quality.BAD]
    assert len(bad) == 1 and "CRC error" in bad[0].error
    assert dev.counters["crc_errors"] == 1 and dev.bus.counters["crc_errors"] == 1
    assert not dev.backing_off
    assert all(r.quality is Quality.GOOD for r in dev.poll())


def test_unreachable_tcp_host_is_a_bus_error_not_a_crash(make_context, clock):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    ctx = make_context({"plc": {"type": "modbus_tcp", "backend": "real", "host": "127.0.0.1", "port": port,
                                "timeout_s": 0.2}}, emulate=False)
    dev = open_source("modbus", "plc", {"registers": [{"name": "a", "address": 0}]}, ctx, bus="plc")
    dev._clock = clock
    dev.open()
    (r,) = dev.poll()
    assert r.quality is Quality.BAD and "cannot connect" in r.error
    assert dev.counters["bus_errors"] == 1 and dev.backing_off


def test_holding_register_and_coil_writes_stick(make_context, plant):
    regs = [{"name": "setpoint", "address": 10, "type": "u16", "scale": 0.1, "unit": "Hz", "writable": True,
             "min": 0, "max": 60},
            {"name": "ramp", "address": 12, "type": "f32", "word_order": "little", "unit": "s", "writable": True,
             "min": 0, "max": 600},
            {"name": "enable", "table": "coil", "address": 3, "writable": True},
            {"name": "status", "table": "input", "address": 0}]
    ctx, server, (dev,) = open_devices(make_context, plant, "modbus_tcp", ("vfd", {"registers": regs}))
    assert dev.write("setpoint", 42.5) == pytest.approx(42.5)  # the value read back from the device
    assert dev.write("ramp", 2.75) == 2.75
    assert dev.write("enable", True) is True
    r = by_channel(dev.poll())
    assert r["vfd.setpoint"].value == pytest.approx(42.5) and r["vfd.enable"].value is True
    assert r["vfd.ramp"].value == 2.75
    with pytest.raises(PermissionError, match="vfd.status is not writable"):
        dev.write("status", 1)
    with pytest.raises(ValueError, match="expected a value from 0 to 60, got 61"):
        dev.write("setpoint", 61)


def test_wrong_bus_is_a_configuration_error(make_context):
    from hal.errors import ConfigurationError
    ctx = make_context({"i2c1": {"type": "i2c"}})
    with pytest.raises(ConfigurationError, match="meter.bus: bus 'i2c1' has type 'i2c', expected modbus_tcp or"):
        open_source("modbus", "meter", {"profile": "sdm630"}, ctx, bus="i2c1")
    with pytest.raises(ConfigurationError, match="meter.bus: missing"):
        open_source("modbus", "meter", {"profile": "sdm630"}, ctx, bus=None)


def test_a_reader_thread_survives_faults_and_resumes(make_context, plant):
    """A poll loop in a thread, as the pipeline runs it, while the device dies and comes back."""
    import threading

    ctx, server, (dev,) = open_devices(make_context, plant, "modbus_rtu",
                                       ("m", {"profile": "sdm630", "include": ["voltage_l1"], "backoff_min_s": 0.01,
                                              "backoff_max_s": 0.02}), timeout=0.05)
    seen: list = []
    errors: list = []
    phase = threading.Event()

    def reader():
        try:
            while not phase.is_set() or not seen or seen[-1].quality is not Quality.GOOD:
                seen.extend(dev.poll())
                if len(seen) > 10000:
                    break
        except BaseException as e:  # the test fails if anything escapes poll()
            errors.append(e)

    server.go_silent(1)
    t = threading.Thread(target=reader)
    t.start()
    while not any(r.quality is Quality.BAD for r in seen):
        t.join(0.01)
    server.fail_with(1, 4)
    server.answer(1)
    while not any(r.error and "exception 4" in r.error for r in seen):
        t.join(0.01)
    server.fail_with(1, None)
    phase.set()
    t.join(10)
    assert not t.is_alive() and not errors
    assert seen[-1].quality is Quality.GOOD
    assert dev.counters["timeouts"] >= 1 and dev.counters["exceptions"] >= 1


def test_a_short_answer_is_a_bad_value_not_an_exception(make_context, plant):
    """A well-framed answer carrying one register where two were asked must not escape poll()."""
    ctx, server, (dev,) = open_devices(make_context, plant, "modbus_tcp",
                                       ("m", {"profile": "sdm630", "include": ["voltage_l1"]}))
    good = server._trace_packet
    armed = [True]

    def shorten(sending, data):  # one short answer, then normal ones
        data = good(sending, data)
        if sending and armed[0] and len(data) == 13:  # MBAP(7) + FC + byte count 4 + two registers
            armed[0] = False
            length = int.from_bytes(data[4:6], "big") - 2
            data = data[:4] + length.to_bytes(2, "big") + data[6:8] + bytes([2]) + data[9:11]
        return data
    server.ensure_running()
    server._server.trace_packet = shorten  # connections made from now on use it
    (r,) = dev.poll()
    assert r.quality is Quality.BAD and ("cannot decode" in r.error or "protocol error" in r.error), r.error
    (r,) = dev.poll()
    assert r.quality is Quality.GOOD, (r.error, dev.counters, dev.bus.counters)


def test_unit_zero_on_rtu_is_rejected(make_context, plant):
    from hal.errors import ConfigurationError
    ctx = make_context({"line": {"type": "modbus_rtu", "backend": "emulated"}}, plant=plant)
    with pytest.raises(ConfigurationError, match="m.unit: expected a unit id from 1 to 247"):
        open_source("modbus", "m", {"profile": "sdm630", "unit": 0}, ctx, bus="line")
