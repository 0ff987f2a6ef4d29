"""Hardware config errors reach the user with the full key path, through agent.config like the agent loads them."""

from __future__ import annotations

import pytest

from agent.config import parse
from agent.errors import ConfigError


def problems(raw, emulate=False):
    with pytest.raises(ConfigError) as e:
        parse(raw, "agent.toml", emulate=emulate)
    return str(e.value)


def test_nested_driver_options_name_their_index_and_key():
    text = problems({
        "buses": {"i2c1": {"type": "i2c"}, "rs485": {"type": "modbus_rtu", "port": "/dev/ttyUSB0"}},
        "sensors": [
            {"name": "adc", "driver": "ads1115", "bus": "i2c1",
             "channels": [{"name": "a"}, {"name": "b", "input": "AIN9", "kind": "loop_4_20ma"}]},
            {"name": "meter", "driver": "modbus", "bus": "rs485",
             "registers": [{"name": "v", "address": 0, "type": "float"}]},
            {"name": "acc", "driver": "adxl345", "bus": "i2c1", "rate_hz": 3000, "address": 0x1D},
            {"name": "lamp", "driver": "gpio.output", "pin": 5},
        ]})
    assert "agent.toml: sensors[0].channels[1].input: expected one of" in text and "'AIN9'" in text
    assert "agent.toml: sensors[1].registers[0].type: expected one of" in text and "'float'" in text
    assert "agent.toml: sensors[2].rate_hz: expected one of" in text
    assert "agent.toml: sensors[3].writable: missing: expected writable = true" in text


def test_bus_options_are_checked_per_type():
    text = problems({"buses": {"rs485": {"type": "modbus_rtu", "port": "/dev/ttyUSB0", "parity": "X",
                                         "timeout_s": 100},
                               "tcp": {"type": "modbus_tcp", "host": "10.0.0.2", "port": 70000},
                               "gpio": {"type": "gpio", "pin_factory": "wiringpi"}}})
    assert "buses.rs485.parity: expected one of 'N', 'E', 'O', got 'X'" in text
    assert "buses.rs485.timeout_s: expected a number from 0.01 to 30, got 100" in text
    assert "buses.tcp.port: expected a number from 1 to 65535, got 70000" in text
    assert "buses.gpio.pin_factory: expected one of" in text


def test_emulate_does_not_need_the_real_ports():
    cfg = parse({"buses": {"rs485": {"type": "modbus_rtu"}},
                 "sensors": [{"name": "meter", "driver": "modbus", "bus": "rs485", "profile": "sdm630"}]},
                "agent.toml", emulate=True)
    assert cfg.buses["rs485"]["backend"] == "emulated" and cfg.buses["rs485"]["timeout_s"] == 0.5
    assert "buses.rs485.port: missing" in problems({"buses": {"rs485": {"type": "modbus_rtu"}}})


def test_an_adxl345_rate_the_i2c_bus_cannot_carry_is_refused_at_config_load() -> None:
    """Before the agent starts: the rate is checked against the bus table's baudrate (default 100 kHz)."""
    from agent.config import parse
    from agent.errors import ConfigError

    def cfg(bus: dict, **opts: object) -> dict:
        return {"buses": {"i2c1": {"type": "i2c", **bus}},
                "sensors": [{"name": "acc", "driver": "adxl345", "bus": "i2c1", **opts}]}
    with pytest.raises(ConfigError) as err:
        parse(cfg({}, rate_hz=800), "a.toml")
    assert "a.toml: sensors[0].rate_hz: expected at most 200 Hz on I2C at 100000 Hz" in str(err.value)
    with pytest.raises(ConfigError, match=r"sensors\[0\].rate_hz: expected at most 800 Hz"):
        parse(cfg({"baudrate": 400_000}, rate_hz=1600), "a.toml")
    assert parse(cfg({"baudrate": 400_000}, rate_hz=800), "a.toml").sensors[0].options["rate_hz"] == 800
    assert parse(cfg({}, rate_hz=1600, exceed_bus_rate=True), "a.toml").sensors
