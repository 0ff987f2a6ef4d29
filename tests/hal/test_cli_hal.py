"""`edge-agent scan i2c`, `scan modbus`, `read SENSOR` on emulated buses, and the hardware example end to end."""

from __future__ import annotations

import re

import pytest

from agent.cli import main
from agent.config import load
from hal.sources import HalContext, open_source
from hal.types import Quality

from tests.paths import ROOT

EXAMPLE = ROOT / "examples" / "hardware.toml"


def test_scan_i2c_names_chips_by_their_id_register(capsys):
    assert main(["scan", "i2c", "--emulate"]) == 0
    out = capsys.readouterr().out
    assert "50: -- -- -- 53" in out and "70: -- -- -- -- -- -- 76 --" in out
    assert "0x53: ADXL345" in out and "0x76: BME280" in out and "0x40: INA219?" in out


def test_scan_i2c_places_the_chips_of_a_config(capsys):
    assert main(["scan", "i2c", "--emulate", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "0x53: ADXL345" in out and "0x48: ADS1115?" in out


@pytest.mark.parametrize("transport", [[], ["--port", "emulated"]])
def test_scan_modbus_finds_the_responding_unit_ids(capsys, transport):
    assert main(["scan", "modbus", "--emulate", "--ids", "1-4", *transport]) == 0
    out = capsys.readouterr().out
    assert "unit   1: answered" in out and "unit   2: answered" in out
    assert "unit   3" not in out and "2 device(s) answered" in out


def test_scan_modbus_needs_a_line(capsys):
    assert main(["scan", "modbus"]) == 2
    assert "--port DEV" in capsys.readouterr().err
    assert main(["scan", "modbus", "--emulate", "--ids", "9-3"]) == 2


def test_read_prints_values_with_units_and_quality(capsys):
    assert main(["read", "cabinet", "--emulate", "-c", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "cabinet: bme280 on bus i2c1 (emulated)" in out
    assert "cabinet.temperature" in out and "degC" in out and "good" in out


def test_read_a_stream_sensor_and_an_unknown_one(capsys):
    assert main(["read", "spindle_vibration", "--emulate", "-c", str(EXAMPLE), "-n", "1"]) == 0
    # the gap is what the emulated FIFO really lost: 0 on a quiet machine, a few samples when this process was
    # kept off the CPU for longer than the FIFO's 40 ms (tests/hal/test_i2c_drivers.py checks the accounting)
    assert re.search(r"block 200 samples @ 800 Hz, gap \d+, (good|uncertain)", capsys.readouterr().out)
    assert main(["read", "nope", "--emulate", "-c", str(EXAMPLE)]) == 2
    assert "no sensor 'nope'" in capsys.readouterr().err


def test_every_sensor_of_the_hardware_example_reads_good_values_when_emulated():
    cfg = load(EXAMPLE, emulate=True)
    ctx = HalContext(emulate=cfg.emulate, buses=cfg.buses)
    try:
        sources = [open_source(s.driver, s.name, s.options, ctx, bus=s.bus) for s in cfg.sensors]
        for src in sources:
            src.open()
        for s, src in zip(cfg.sensors, sources):
            if s.kind == "stream":
                block = src.read_block(5.0)
                assert block is not None and block.quality is Quality.GOOD, s.name
            else:
                readings = src.poll()
                assert readings and all(r.quality is not Quality.BAD for r in readings), (s.name, readings)
        for src in sources:
            src.close()
    finally:
        ctx.close()


def test_the_example_names_the_real_hardware_it_needs(tmp_path):
    from agent.errors import ConfigError
    p = tmp_path / "hw.toml"
    p.write_text(EXAMPLE.read_text().replace('host = "192.168.10.20"\n', ""))
    with pytest.raises(ConfigError, match=r"buses.plc.host: missing: expected the device's IP address"):
        load(p)
    load(p, emulate=True)  # the emulated backend needs no host


def test_scan_i2c_of_a_missing_adapter_says_why(capsys):
    assert main(["scan", "i2c", "--bus", "254"]) == 1
    assert "cannot open /dev/i2c-254" in capsys.readouterr().err
