"""I2C chip drivers against their emulated chips and against the data sheets' own numbers; bus faults as bad values."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from hal.drivers import ads1115, adxl345, bme280, ina219
from hal.emulated.i2c import EmulatedI2CBus
from hal.emulated.plant import Plant
from hal.errors import WrongDevice
from hal.i2c import I2CDevice
from hal.sources import open_source
from hal.types import Quality

EXAMPLE = bme280.Calibration(27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000,
                             75, 362, 0, 313, 50, 30)


@pytest.fixture
def rig(make_context, clock):
    """An emulated i2c bus named i2c1 on a fake clock, and a helper to open drivers on it."""
    plant = Plant(seed=7)
    ctx = make_context({"i2c1": {"type": "i2c", "backend": "emulated", "baudrate": 400_000}}, plant=plant)
    bus = ctx.shared("i2c:i2c1", lambda: EmulatedI2CBus("i2c1", plant=plant, clock=clock, baudrate=400_000))

    class Rig:
        pass
    r = Rig()
    r.ctx, r.bus, r.plant, r.clock = ctx, bus, plant, clock

    def make(driver, name, options=None, open_=True):
        d = open_source(driver, name, options or {}, ctx, bus="i2c1")
        if open_:
            d.open()
        return d
    r.make = make
    return r


def values(readings):
    return {r.channel.split(".", 1)[1]: r for r in readings}


# -- the bus -----------------------------------------------------------------------------------------------------------

def test_absent_address_raises_eremoteio_like_the_kernel(rig):
    with pytest.raises(OSError) as e:
        rig.bus.read_byte_data(0x42, 0)
    assert e.value.errno == errno.EREMOTEIO == 121


def test_typed_errors_name_bus_address_and_chip(rig):
    from hal.errors import BusStuck, DeviceNotFound
    dev = I2CDevice(rig.bus, 0x42, "bme280")
    with pytest.raises(DeviceNotFound, match=r"I2C bus i2c1 address 0x42 \(bme280\): no acknowledge.*errno 121"):
        dev.read_u8(0xD0)
    rig.bus.stick()
    with pytest.raises(BusStuck, match="bus timed out"):
        dev.read_u8(0xD0)


# -- BME280 ------------------------------------------------------------------------------------------------------------

def test_bme280_compensation_matches_the_datasheet_worked_example():
    t, t_fine = bme280.compensate_temperature(519888, EXAMPLE)
    assert (t, t_fine) == (2508, 128422)  # 25.08 degC
    p = bme280.compensate_pressure(415148, t_fine, EXAMPLE)
    # the data sheet prints 25767236 and 100653.27 Pa; executing its published int64 code gives 25767233
    assert p == 25767233 and p / 256 == pytest.approx(100653.27, abs=0.05)


def _humidity_double(adc_h: int, t_fine: int, c: bme280.Calibration) -> float:
    """The data sheet's double-precision humidity formula (4.2.3), transcribed independently of the driver."""
    var_h = t_fine - 76800.0
    var_h = (adc_h - (c.H4 * 64.0 + c.H5 / 16384.0 * var_h)) * (
        c.H2 / 65536.0 * (1.0 + c.H6 / 67108864.0 * var_h * (1.0 + c.H3 / 67108864.0 * var_h)))
    var_h = var_h * (1.0 - c.H1 * var_h / 524288.0)
    return min(max(var_h, 0.0), 100.0)


@pytest.mark.parametrize("adc_h", [20000, 26000, 30000, 34000, 40000])
def test_bme280_integer_humidity_agrees_with_the_double_formula(adc_h):
    _, t_fine = bme280.compensate_temperature(519888, EXAMPLE)
    assert bme280.compensate_humidity(adc_h, t_fine, EXAMPLE) / 1024 == pytest.approx(
        _humidity_double(adc_h, t_fine, EXAMPLE), abs=0.02)


def test_bme280_calibration_unpacks_the_shared_h4_h5_nibbles():
    c, h = EXAMPLE.to_registers()
    assert h[3:6] == bytes([313 >> 4, (313 & 0xF) | ((50 & 0xF) << 4), 50 >> 4])  # E4, E5, E6
    assert bme280.Calibration.from_registers(c, h) == EXAMPLE
    neg = bme280.Calibration.from_registers(c, bytes([0x6A, 0x01, 0, 0xFF, 0xFF, 0xFF, 0xF6]))
    assert (neg.H2, neg.H4, neg.H5, neg.H6) == (362, -1, -1, -10)


def test_bme280_reads_the_environment(rig):
    chip = rig.bus.place(0x76, "bme280")
    chip.environment = (21.5, 55.0, 1013.25)
    s = rig.make("bme280", "cabinet")
    v = values(s.poll())
    assert v["temperature"].value == pytest.approx(21.5, abs=0.01) and v["temperature"].unit == "degC"
    assert v["humidity"].value == pytest.approx(55.0, abs=0.01) and v["humidity"].unit == "%RH"
    assert v["pressure"].value == pytest.approx(1013.25, abs=0.01) and v["pressure"].unit == "hPa"
    chip.environment = (-10.0, 90.0, 950.0)
    v = values(s.poll())
    assert (v["temperature"].value, v["humidity"].value) == (pytest.approx(-10.0, abs=0.01),
                                                             pytest.approx(90, abs=0.01))


def test_bme280_wrong_chip_id_names_expected_and_found(rig):
    rig.bus.place(0x77, "bme280").regs[0xD0] = 0x58
    s = rig.make("bme280", "cabinet", {"address": 0x77}, open_=False)
    with pytest.raises(WrongDevice, match=r"0x77.*chip id 0x58 \(a BMP280: no humidity\), expected 0x60"):
        s.open()


def test_bme280_nack_is_a_bad_reading_then_recovers(rig):
    s = rig.make("bme280", "cabinet")
    rig.bus.nack(0x76, 1)
    bad = s.poll()
    assert len(bad) == 3 and all(r.quality is Quality.BAD and "no acknowledge" in r.error for r in bad)
    assert s.counters["bus_errors"] == 1
    assert all(r.quality is Quality.GOOD for r in s.poll())
    assert s.counters["inits"] == 2  # re-initialised after the fault


def test_bme280_absent_at_start_is_retried_not_fatal(rig):
    s = rig.make("bme280", "cabinet", open_=False)
    rig.bus.remove(0x76)
    s.open()  # a chip that is not there yet is a fault, not a crash
    assert all(r.quality is Quality.BAD for r in s.poll())
    rig.bus.place(0x76, "bme280")
    assert all(r.quality is Quality.GOOD for r in s.poll())


# -- ADS1115 -----------------------------------------------------------------------------------------------------------

def test_ads1115_codes_follow_the_full_scale_table():
    assert ads1115.code_to_volts(1, 6.144) == pytest.approx(187.5e-6)
    assert ads1115.code_to_volts(1, 0.256) == pytest.approx(7.8125e-6)
    assert ads1115.code_to_volts(0x7FFF, 2.048) == pytest.approx(2.048 * 32767 / 32768)
    assert ads1115.code_to_volts(0x8000, 2.048) == -2.048
    assert ads1115.volts_to_code(5.0, 4.096) == 0x7FFF and ads1115.volts_to_code(-5.0, 4.096) == 0x8000
    # the power-on config 0x8583: AIN0-AIN1, ±2.048 V, single-shot, 128 SPS, comparator off
    assert ads1115.config_word("AIN0-AIN1", 2.048, 128) == 0x8583


def test_loop_current_levels_follow_namur_ne43():
    assert ads1115.loop_value(4.0, 0, 10) == (0.0, Quality.GOOD, None)
    assert ads1115.loop_value(20.0, 0, 10)[0] == 10.0
    assert ads1115.loop_value(12.0, -50, 150)[0] == 50.0
    value, q, err = ads1115.loop_value(3.5, 0, 10)
    assert value is None and q is Quality.BAD and "open loop" in err
    assert ads1115.loop_value(3.7, 0, 10)[1] is Quality.UNCERTAIN
    assert ads1115.loop_value(20.7, 0, 10)[1] is Quality.UNCERTAIN
    assert ads1115.loop_value(21.5, 0, 10)[1] is Quality.BAD
    # NE 43: failure is <= 3.6 mA or >= 21 mA, the boundaries included
    assert ads1115.loop_value(3.6, 0, 10)[1] is Quality.BAD and ads1115.loop_value(21.0, 0, 10)[1] is Quality.BAD
    assert ads1115.loop_value(3.61, 0, 10)[1] is Quality.UNCERTAIN
    assert ads1115.loop_value(20.99, 0, 10)[1] is Quality.UNCERTAIN


def test_ct_clamp_rms_integrates_whole_cycles_on_the_timestamps():
    """A 1 V-peak 50 Hz sine has an RMS of 1/sqrt(2) V. Read at an uneven ~700/s (not the 860/s a fixed spacing
    would assume) for 0.23 s: the RMS over the 11 whole cycles it spans is exact, whatever the spacing."""
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.uniform(0.8, 2.0, 161) / 1000.0)
    v = 0.25 + np.sin(2 * np.pi * 50 * t + 0.4)  # with a DC offset, removed
    rms, cycles = ads1115.ac_rms(t, v, 50.0)
    assert cycles == int((t[-1] - t[0]) * 50) and rms == pytest.approx(1 / np.sqrt(2), rel=2e-3)
    with pytest.raises(ValueError, match="at least one 50 Hz cycle"):
        ads1115.ac_rms(t[:10], v[:10], 50.0)


ADC_CHANNELS = [
    {"name": "pressure", "input": "AIN0", "kind": "loop_4_20ma", "burden_ohm": 150, "range_lo": 0, "range_hi": 10,
     "unit": "bar"},
    {"name": "motor_current", "input": "AIN2-AIN3", "kind": "ct_clamp", "range_v": 1.024, "amps_per_volt": 30},
    {"name": "supply", "input": "AIN1", "kind": "voltage", "range_v": 4.096, "scale": 10.0, "unit": "V",
     "signal": "supply_voltage"},
]


def test_ads1115_engineering_values_from_the_plant(rig):
    s = rig.make("ads1115", "adc", {"channels": ADC_CHANNELS})
    v = values(s.poll())
    expect_bar = (rig.plant.signal("loop_current_ma", rig.bus.plant_time()) - 4) / 16 * 10
    assert v["pressure"].value == pytest.approx(expect_bar, abs=0.02) and v["pressure"].unit == "bar"
    assert v["motor_current"].value == pytest.approx(rig.plant.motor_current(0.0, 0), rel=0.02)
    assert v["motor_current"].unit == "A"
    assert v["supply"].value == pytest.approx(rig.plant.signal("supply_voltage", 0.0), abs=0.01)


def test_ads1115_open_loop_and_saturation_are_bad(rig):
    s = rig.make("ads1115", "adc", {"channels": ADC_CHANNELS})
    rig.plant.overrides["loop_current_ma"] = 0.0  # wire break
    rig.plant.overrides["supply_voltage"] = 45.0  # 4.5 V at the input, above the ±4.096 V range
    v = values(s.poll())
    assert v["pressure"].quality is Quality.BAD and "open loop: 0.00 mA" in v["pressure"].error
    assert v["supply"].quality is Quality.BAD and "saturated" in v["supply"].error
    assert v["motor_current"].quality is Quality.GOOD


def test_ads1115_channel_errors_name_the_nested_key(rig):
    from hal.errors import ConfigurationError
    with pytest.raises(ConfigurationError, match=r"adc.channels\[1\].input: expected one of"):
        rig.make("ads1115", "adc", {"channels": [{"name": "a"}, {"name": "b", "input": "AIN7"}]})


# -- INA219 ------------------------------------------------------------------------------------------------------------

def test_ina219_calibration_follows_the_datasheet_equations():
    assert ina219.calibration(2.0, 0.1, 0.0001) == (4096, 0.0001, pytest.approx(0.002))  # 32 V, 2 A, 0.1 ohm
    assert ina219.calibration(1.0, 0.1, 0.00004)[0] == 10240
    cal, lsb, plsb = ina219.calibration(3.2, 0.1)
    assert lsb == pytest.approx(3.2 / 32768, rel=1e-3) and plsb == pytest.approx(20 * lsb)
    assert ina219.shunt_register_to_volts(0x7D00) == pytest.approx(0.320)  # +320.00 mV at PGA /8
    assert ina219.shunt_register_to_volts(0x8300) == pytest.approx(-0.320)
    assert ina219.bus_register_to_volts((3000 << 3) | 0b10) == pytest.approx(12.0)


def test_ina219_reads_the_rail(rig):
    chip = rig.bus.place(0x40, "ina219")
    chip.rail = (24.0, 1.5)
    s = rig.make("ina219", "rail", {"shunt_ohm": 0.1, "max_current_a": 2.0, "current_lsb_a": 0.0001})
    v = values(s.poll())
    assert v["bus_voltage"].value == pytest.approx(24.0) and v["shunt_voltage"].value == pytest.approx(150.0)
    assert v["current"].value == pytest.approx(1.5, abs=0.0001) and v["power"].value == pytest.approx(36.0, abs=0.004)
    chip.words[5] = 0  # a power-on reset of the chip loses the calibration: the driver restores it
    assert values(s.poll())["current"].value == pytest.approx(1.5, abs=0.0001)


def test_ina219_refuses_a_calibration_that_does_not_fit_the_register():
    """0.1 ohm with a 1 uA LSB: Cal = 0.04096 / (1e-6 x 0.1) = 409600, beyond 16 bits; masking it would have written
    409600 & 0xFFFE = 16384 and read every current 25x low."""
    from hal.sources import validate_driver_options
    with pytest.raises(ValueError, match=r"from 6.2502e-06 to 0.2048 A.*409600"):
        ina219.calibration(0.01, 0.1, 1e-6)
    _, errors = validate_driver_options("ina219", {"shunt_ohm": 0.1, "max_current_a": 0.01, "current_lsb_a": 1e-6})
    assert errors[0][0] == "current_lsb_a" and "0.2048 A" in errors[0][1] and "6.2502e-06" in errors[0][1]
    lo, hi = ina219.calibration_limits(0.1)
    assert ina219.calibration(0.2, 0.1, lo)[0] == 65534  # the largest Cal the register holds (bit 0 void)
    assert ina219.calibration(0.0001, 0.1, hi)[0] == 2
    with pytest.raises(ValueError, match="65536 does not fit"):
        ina219.calibration(0.2, 0.1, 6.25e-6)  # exactly 2^16
    with pytest.raises(ValueError, match="overflow the current register"):
        ina219.calibration(0.4, 0.1, 0.00001)  # 32767 x 10 uA = 0.33 A < 0.4 A


def test_ina219_math_overflow_is_bad(rig):
    chip = rig.bus.place(0x40, "ina219")
    chip.rail = (12.0, 0.39)  # beyond max_current_a: 39000 counts of 10 uA overflow the current register
    s = rig.make("ina219", "rail", {"shunt_ohm": 0.1, "max_current_a": 0.2, "current_lsb_a": 0.00001})
    v = values(s.poll())
    assert v["current"].quality is Quality.BAD and "overflow" in v["current"].error
    assert v["bus_voltage"].quality is Quality.GOOD


def test_ina219_rejects_a_current_beyond_the_shunt_range():
    from hal.sources import validate_driver_options
    _, errors = validate_driver_options("ina219", {"shunt_ohm": 0.1, "max_current_a": 5.0})
    assert errors and errors[0][0] == "max_current_a" and "320 mV" in errors[0][1]
    _, errors = validate_driver_options("ina219", {"address": 0x60})
    assert errors[0][0] == "address" and "0x40" in errors[0][1]


# -- ADXL345 -----------------------------------------------------------------------------------------------------------

def test_adxl345_scale_is_3_9_mg_per_lsb():
    assert adxl345.raw_to_ms2(np.array([256]))[0] == pytest.approx(256 * 0.0039 * 9.80665)
    assert adxl345.RATE_CODES[3200] == 0x0F and adxl345.RATE_CODES[100] == 0x0A


def test_adxl345_streams_blocks_of_plant_vibration_read_in_bursts(rig):
    s = rig.make("adxl345", "spindle", {"rate_hz": 800, "block_size": 1024, "watermark": 16})
    t0 = rig.bus.transactions
    blocks = [s.read_block(2.0) for _ in range(3)]
    assert all(b is not None and b.samples.shape == (1024, 3) and b.gap == 0 for b in blocks)
    b = blocks[0]
    assert b.axes == ("x", "y", "z") and b.unit == "m/s2" and b.rate_hz == 800
    assert b.samples[:, 2].mean() == pytest.approx(9.81, abs=0.3)  # gravity on z
    spectrum = np.abs(np.fft.rfft(b.samples[:, 0] - b.samples[:, 0].mean()))
    peak_hz = np.argmax(spectrum) * 800 / 1024
    assert peak_hz == pytest.approx(rig.plant.shaft_hz, abs=800 / 1024)
    # contiguous blocks: t0 advances by exactly block_size / rate
    assert blocks[1].t0_ns - blocks[0].t0_ns == pytest.approx(1024 / 800 * 1e9, abs=1)
    # bursts: one transaction per sample, one INT_SOURCE check per wake-up and one FIFO_STATUS per drain
    used = rig.bus.transactions - t0
    assert used == s.counters["samples"] + s.counters["checks"] + s.counters["drains"]
    assert s.counters["drains"] * 16 <= s.counters["samples"]  # drained at the watermark (16), not per sample
    assert s.counters["checks"] < s.counters["samples"] / 4


def test_adxl345_a_stall_loses_samples_counted_against_elapsed_time(rig):
    s = rig.make("adxl345", "spindle", {"rate_hz": 800, "block_size": 256})
    chip = rig.bus.chips[0x53]
    assert s.read_block(1.0).gap == 0
    rig.clock.advance(1.0)  # the reader stalls for a second: 800 samples arrive, the 32-entry FIFO keeps 32
    blocks = []
    while sum(b.gap for b in blocks) == 0:
        blocks.append(s.read_block(1.0))
    assert s.counters["overruns"] == 1
    assert chip.discarded == pytest.approx(800 - 32, abs=2)  # what the emulated chip really dropped
    assert blocks[-1].gap == pytest.approx(chip.discarded, abs=1) and s.counters["lost_samples"] == blocks[-1].gap
    # the block before the gap was cut short rather than stitched across it
    assert all(len(b) <= 256 for b in blocks)
    nxt = s.read_block(1.0)
    assert nxt.gap == 0 and len(nxt) == 256


def test_adxl345_a_drain_at_exactly_32_entries_is_not_a_gap(rig):
    """Data sheet, "Overrun": in stream mode the bit is set when the FIFO is filled - full, nothing lost yet."""
    s = rig.make("adxl345", "spindle", {"rate_hz": 800, "block_size": 64, "watermark": 16})
    chip = rig.bus.chips[0x53]
    rig.clock.advance(31 / 800)  # samples 0..31 (the first at the start of measurement): exactly 32 entries
    assert rig.bus.read_byte_data(0x53, 0x39) == 32 and chip.discarded == 0
    assert rig.bus.read_byte_data(0x53, 0x30) & 0x01  # Overrun: the FIFO is full
    assert s.drain() == 32
    assert s.counters["full"] == 1 and s.counters["overruns"] == 0 and s.counters["lost_samples"] == 0
    rig.clock.advance(32 / 800)  # and again: a reader that keeps landing on 32 entries never loses anything
    assert s.drain() == 32 and s.counters["full"] == 2 and s.counters["lost_samples"] == 0
    blocks = [s.read_block(1.0) for _ in range(2)]
    assert [b.gap for b in blocks] == [0, 0] and blocks[1].t0_ns - blocks[0].t0_ns == pytest.approx(64 / 800 * 1e9)
    assert chip.discarded == 0


def test_adxl345_emulated_fifo_follows_the_datasheet():
    """Stream mode keeps the newest 32; Overrun = FIFO full (cleared by reading FIFO data); bypass mode: Overrun
    when new data replaces unread data. Reset values from table 19."""
    from tests.hal.conftest import FakeClock
    clock = FakeClock()
    bus = EmulatedI2CBus("i2c", clock=clock)
    chip = bus.place(0x53, "adxl345")
    assert [bus.read_byte_data(0x53, r) for r in (0x00, 0x2C, 0x2D, 0x30, 0x31, 0x38, 0x39)] == [
        0xE5, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00]  # INT_SOURCE resets to 0x02 but Watermark is live: bypass
    bus.write_byte_data(0x53, 0x2C, 0x0A)  # 100 Hz
    bus.write_byte_data(0x53, 0x38, 0x80 | 20)  # stream, watermark 20
    bus.write_byte_data(0x53, 0x2D, 0x08)  # measure
    clock.advance(0.305)  # samples 0..30: 31 entries
    assert bus.read_byte_data(0x53, 0x39) == 31 and bus.read_byte_data(0x53, 0x30) & 0x03 == 0x02  # watermark
    clock.advance(0.01)  # the 32nd: full
    assert bus.read_byte_data(0x53, 0x39) == 32 and bus.read_byte_data(0x53, 0x30) & 0x01 and chip.discarded == 0
    clock.advance(0.03)  # three more: the oldest three are replaced
    assert bus.read_byte_data(0x53, 0x39) == 32 and chip.discarded == 3
    bus.read_i2c_block_data(0x53, 0x32, 6)  # pops one entry: Overrun cleared
    assert bus.read_byte_data(0x53, 0x39) == 31 and not bus.read_byte_data(0x53, 0x30) & 0x01
    bus.write_byte_data(0x53, 0x38, 0x00)  # bypass: FIFO cleared
    assert bus.read_byte_data(0x53, 0x39) == 0
    clock.advance(0.02)  # two new samples, none read: the first was replaced unread
    assert bus.read_byte_data(0x53, 0x30) & 0x81 == 0x81
    bus.read_i2c_block_data(0x53, 0x32, 6)
    assert not bus.read_byte_data(0x53, 0x30) & 0x01


def test_adxl345_bus_time_and_rate_limits_are_the_datasheets():
    from hal.chips import adxl345 as chip
    from hal.chips import i2c_read_s
    assert chip.sample_bits() == 84  # START, addr+W, reg, Sr, addr+R, 6 data bytes (9 clocks each), STOP
    assert i2c_read_s(6, 400_000) == pytest.approx(210e-6) and i2c_read_s(6, 100_000) == pytest.approx(840e-6)
    # 800 Hz needs >= 400 kHz, the rest scale proportionally (200 Hz at 100 kHz); 1600/3200 Hz only on SPI
    assert chip.max_i2c_rate_hz(400_000) == 800 and chip.max_i2c_rate_hz(100_000) == 200
    assert chip.max_i2c_rate_hz(1_000_000) == 800  # the ADXL345's I2C is Fast-mode at most
    assert {r: c for r, c in chip.RATE_CODES.items() if r >= 100} == {3200: 0x0F, 1600: 0x0E, 800: 0x0D, 400: 0x0C,
                                                                     200: 0x0B, 100: 0x0A}  # table 7
    assert chip.CHIP.reset_values()[0x00] == 0xE5 and chip.CHIP.reset_values()[0x2C] == 0x0A  # table 19
    assert chip.CHIP.reset_values()[0x30] == 0x02


def test_adxl345_refuses_rates_the_i2c_bus_cannot_carry(make_context, caplog):
    from hal.errors import ConfigurationError
    slow = make_context({"i2c1": {"type": "i2c", "backend": "emulated"}})  # 100 kHz: the Pi's default
    with pytest.raises(ConfigurationError, match=r"spindle.rate_hz: expected at most 200 Hz on I2C at 100000 Hz.*"
                                                 r"i2c_arm_baudrate=400000.*sensor node"):
        open_source("adxl345", "spindle", {"rate_hz": 800}, slow, bus="i2c1")
    assert open_source("adxl345", "ok", {"rate_hz": 200}, slow, bus="i2c1").rate_hz == 200
    fast = make_context({"i2c1": {"type": "i2c", "backend": "emulated", "baudrate": 400_000}})
    assert open_source("adxl345", "spindle", {"rate_hz": 800}, fast, bus="i2c1").rate_hz == 800
    with pytest.raises(ConfigurationError, match="expected at most 800 Hz.*SPI"):
        open_source("adxl345", "spindle2", {"rate_hz": 1600, "address": 0x1D}, fast, bus="i2c1")
    with caplog.at_level("WARNING", logger="hal.adxl345"):
        s = open_source("adxl345", "spindle3", {"rate_hz": 3200, "exceed_bus_rate": True, "address": 0x1D}, fast,
                        bus="i2c1")
    assert s.rate_hz == 3200 and "exceed_bus_rate" in caplog.text


def test_adxl345_waits_for_the_watermark(rig):
    s = rig.make("adxl345", "spindle", {"rate_hz": 100, "watermark": 20, "block_size": 10})
    chip = rig.bus.chips[0x53]
    rig.clock.advance(0.1)  # 11 samples (the first at t = 0) in the FIFO, below the watermark
    assert s.drain() == 0 and len(chip.fifo) == 11
    rig.clock.advance(0.1)
    assert s.drain() == 21 and len(chip.fifo) == 0
    assert s.read_block(0.0).samples.shape == (10, 3)


def test_adxl345_wrong_devid(rig):
    rig.bus.place(0x53, "adxl345").regs[0x00] = 0x00
    s = rig.make("adxl345", "spindle", open_=False)
    with pytest.raises(WrongDevice, match="DEVID 0x00, expected 0xe5"):
        s.open()


def test_adxl345_bus_fault_mid_stream_is_counted_and_becomes_a_gap(rig):
    s = rig.make("adxl345", "spindle", {"rate_hz": 800, "block_size": 64})
    assert s.read_block(1.0) is not None
    rig.bus.nack(0x53, 1)
    got = [s.read_block(1.0) for _ in range(4)]
    assert s.counters["bus_errors"] == 1 and s.counters["inits"] == 2
    assert all(b is not None for b in got) and sum(b.gap for b in got) >= 1


def test_adxl345_read_block_times_out_with_none(rig):
    s = rig.make("adxl345", "spindle", {"rate_hz": 25, "block_size": 1024})
    assert s.read_block(0.5) is None


def test_real_backend_without_the_adapter_reads_bad_not_crash(make_context):
    """The smbus2 backend on an adapter that does not exist: every read is a located, bad value."""
    ctx = make_context({"i2c9": {"type": "i2c", "backend": "real", "bus": 254}}, emulate=False)
    s = open_source("bme280", "cabinet", {}, ctx, bus="i2c9")
    s.open()
    readings = s.poll()
    assert len(readings) == 3 and all(r.quality is Quality.BAD for r in readings)
    assert "I2C bus i2c9 (/dev/i2c-254) address 0x76 (bme280)" in readings[0].error
    assert s.counters["bus_errors"] == 2


def test_bus_time_and_conversion_limits_of_every_chip_match_the_docs_table():
    """docs/hal.md "Rates each I2C driver can carry": clocks per reading (I2C spec: 9 per byte + START/STOP) and the
    data sheets' conversion limits."""
    from hal.chips import ads1115 as ads, bme280 as bme, i2c_read_bits, i2c_write_bits, ina219 as ina
    assert (i2c_read_bits(1), i2c_write_bits(1)) == (39, 29)
    assert bme.poll_bits() == 170 and ina.poll_bits() == 240
    assert ads.single_shot_bits() == 134 and ads.continuous_read_bits() == 48
    assert bme.measurement_time_max_ms(1, 1, 1) == pytest.approx(9.3)  # BME280 9.1: weather monitoring, max
    assert bme.measurement_time_max_ms(16, 16, 16) == pytest.approx(112.8)
    assert ina.CONVERSION_S[1] == 532e-6 and ina.CONVERSION_S[128] == 68.10e-3  # INA219 table 5
    assert ads.conversion_s(860) == pytest.approx(1 / 860)
    # reset values the data sheets print
    assert ina.CHIP.reset_values() == {0x00: 0x399F, 0x03: 0, 0x04: 0, 0x05: 0}
    assert ads.CHIP.reset_values() == {0: 0x0000, 1: 0x8583, 2: 0x8000, 3: 0x7FFF}
    assert bme.CHIP.reset_values()[0xD0] == 0x60 and bme.SKIPPED_DATA == bytes.fromhex("8000008000008000")


def test_fields_refuse_values_that_do_not_fit():
    from hal.chips import ina219 as ina
    assert ina.PG.put(0x399F, 0b01) == 0x299F and ina.PG.get(0x399F) == 0b11
    with pytest.raises(ValueError, match=r"config\[12:11\]: expected 0...3, got 4"):
        ina.PG.put(0, 4)
