"""Texas Instruments ADS1115 16-bit delta-sigma ADC on I2C (0x48..0x4B by the ADDR pin), with the conversions a
plant needs: plain voltage, a 4-20 mA current loop through a burden resistor, and a current-transformer clamp.

Source: Texas Instruments, "ADS111x Ultra-Small, Low-Power, I2C-Compatible, 860-SPS, 16-Bit ADCs" (SBAS444),
section 9.6 registers: pointer 00 conversion, 01 config (reset 0x8583), 10 Lo_thresh, 11 Hi_thresh; config fields
OS[15] MUX[14:12] PGA[11:9] MODE[8] DR[7:5] COMP_MODE[4] COMP_POL[3] COMP_LAT[2] COMP_QUE[1:0]; table 3 full-scale
range and LSB (±6.144 V: 187.5 µV ... ±0.256 V: 7.8125 µV, LSB = FSR / 2^15); output codes 0x7FFF = +FS, 0x8000 =
-FS. Registers are sent MSB first. No analog input may exceed VDD + 0.3 V whatever the PGA says.

4-20 mA: I = V / burden; the value is mapped linearly from 4..20 mA to range_lo..range_hi. Signal levels follow
NAMUR NE 43: at or below 3.6 mA the loop is open or the transmitter signals a failure (bad), at or above 21 mA it is
shorted or failed (bad) - both boundaries are failure values; 3.6-3.8 and 20.5-21 mA are outside the measuring
range (uncertain).
CT clamp: the ADC runs continuously at 860 SPS across the clamp's output (differential) while the driver reads the
conversion register `samples` times, stamping each read on the bus clock; the RMS of the AC part is integrated on
those timestamps over the whole mains cycles (`mains_hz`) they span - never an assumed 1/860 s spacing (the reads
take bus time and the converter's data rate varies by ±10 %). Times `amps_per_volt` it is the primary current
(30 A/1 V for an SCT-013-030; a current-output CT with ratio N:1 into a burden R gives N / R amps per volt).
Register layout, fields and timing: `hal.chips.ads1115`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hal.chips import ads1115 as chip
from hal.drivers.base import I2CSensor, address_option
from hal.errors import BusTimeout, WrongDevice
from hal.options import Option, REQUIRED, in_range, parse_options
from hal.types import Quality, Reading

_REG_CONVERSION = chip.CONVERSION.address
_REG_CONFIG = chip.CONFIG.address
_REG_LO_THRESH = chip.LO_THRESH.address
_REG_HI_THRESH = chip.HI_THRESH.address

CONFIG_RESET = chip.CONFIG_RESET
OS_SINGLE = chip.OS.mask  # write: start a single conversion; read: 1 = not converting
MODE_SINGLE = chip.MODE.mask  # 1: single-shot / power-down, 0: continuous
COMP_QUE_DISABLE = chip.COMP_QUE_DISABLE
MUX = chip.MUX
PGA = chip.PGA
DATA_RATE = chip.DATA_RATE
LOOP_OPEN_MA, LOOP_LOW_MA, LOOP_HIGH_MA, LOOP_SHORT_MA = 3.6, 3.8, 20.5, 21.0  # NAMUR NE 43


def code_to_volts(code: int, fsr: float) -> float:
    """Signed 16-bit conversion result to volts: LSB = FSR / 32768."""
    if code & 0x8000:
        code -= 0x10000
    return code * fsr / 32768.0


def volts_to_code(volts: float, fsr: float) -> int:
    """The inverse, saturating at 0x7FFF / 0x8000 like the converter."""
    code = int(round(volts / fsr * 32768.0))
    return min(max(code, -32768), 32767) & 0xFFFF


def config_word(mux: str, fsr: float, rate: int, single: bool = True, start: bool = True) -> int:
    w = chip.OS.put(0, int(start))
    w = chip.MUX_FIELD.put(w, MUX[mux])
    w = chip.PGA_FIELD.put(w, PGA[fsr])
    w = chip.MODE.put(w, int(single))
    w = chip.DR.put(w, DATA_RATE[rate])
    return chip.COMP_QUE.put(w, COMP_QUE_DISABLE)


def loop_value(ma: float, lo: float, hi: float) -> tuple[float | None, Quality, str | None]:
    """4-20 mA to engineering units with NAMUR NE 43 quality: a failure is signalled at <= 3.6 mA or >= 21 mA
    (both boundaries are failure values)."""
    if ma <= LOOP_OPEN_MA:
        return None, Quality.BAD, f"open loop: {ma:.2f} mA <= {LOOP_OPEN_MA} mA (wire break or transmitter fault)"
    if ma >= LOOP_SHORT_MA:
        return None, Quality.BAD, f"loop current {ma:.2f} mA >= {LOOP_SHORT_MA} mA (short circuit or fault)"
    value = lo + (ma - 4.0) / 16.0 * (hi - lo)
    if ma < LOOP_LOW_MA or ma > LOOP_HIGH_MA:
        return value, Quality.UNCERTAIN, f"{ma:.2f} mA is outside the 3.8-20.5 mA measuring range"
    return value, Quality.GOOD, None


def ac_rms(times: Sequence[float], volts: Sequence[float], mains_hz: float) -> tuple[float, int]:
    """(RMS of the AC part, whole cycles integrated) of samples taken at `times` (s, any spacing): the mean and
    the mean square are time integrals (trapezoids) over the largest whole number of mains cycles from the first
    sample, the last point interpolated at the cycle boundary. ValueError if the samples span less than a cycle."""
    t = np.asarray(times, dtype=float)
    v = np.asarray(volts, dtype=float)
    cycles = int(math.floor((t[-1] - t[0]) * mains_hz + 1e-9)) if len(t) > 1 else 0
    if cycles < 1:
        raise ValueError(f"expected samples spanning at least one {mains_hz:g} Hz cycle, got "
                         f"{(t[-1] - t[0]) * 1000 if len(t) > 1 else 0:.1f} ms")
    end = t[0] + cycles / mains_hz
    n = int(np.searchsorted(t, end, side="right"))
    tt, vv = t[:n], v[:n]
    if tt[-1] < end:
        tt = np.append(tt, end)
        vv = np.append(vv, np.interp(end, t, v))
    span = end - t[0]
    dt = np.diff(tt)
    mean = float(np.sum((vv[1:] + vv[:-1]) / 2 * dt)) / span
    ac = vv - mean
    return math.sqrt(max(float(np.sum((ac[1:] ** 2 + ac[:-1] ** 2) / 2 * dt)) / span, 0.0)), cycles


CHANNEL_OPTIONS = [
    Option("name", str, REQUIRED, "channel name; the reading is <sensor>.<name>"),
    Option("input", str, "AIN0", "single-ended AIN0..AIN3 or differential AIN0-AIN1, AIN0-AIN3, AIN1-AIN3, "
           "AIN2-AIN3", choices=tuple(MUX)),
    Option("range_v", (int, float), 4.096, "PGA full-scale range in V", choices=tuple(PGA)),
    Option("data_rate", int, 128, "samples per second", choices=tuple(DATA_RATE)),
    Option("kind", str, "voltage", "voltage, loop_4_20ma or ct_clamp", choices=("voltage", "loop_4_20ma", "ct_clamp")),
    Option("unit", str, "", "engineering unit (default V, the loop's unit, or A)"),
    Option("scale", (int, float), 1.0, "voltage: value = volts * scale + offset"),
    Option("offset", (int, float), 0.0, "voltage: value = volts * scale + offset"),
    Option("burden_ohm", (int, float), 150.0, "loop: burden resistor in ohms", in_range(1, 10000)),
    Option("range_lo", (int, float), 0.0, "loop: value at 4 mA"),
    Option("range_hi", (int, float), 100.0, "loop: value at 20 mA"),
    Option("amps_per_volt", (int, float), 30.0, "ct_clamp: primary amps per volt at the clamp output",
           in_range(1e-6, 1e6)),
    Option("samples", int, 172, "ct_clamp: conversions read per reading at 860 SPS (172: about 0.2 s); the RMS "
           "integrates the whole mains cycles they span, on their timestamps", in_range(16, 4096)),
    Option("mains_hz", (int, float), 50.0, "ct_clamp: mains frequency (50 or 60 Hz); the RMS covers whole cycles",
           in_range(10, 1000)),
]


def channel_schema() -> list[Option]:
    """A channel table's options: the driver's own, then the emulation-only ones the emulated side declares for
    "ads1115.channels" (`hal.emulated.drivers`, found through `hal.backends`)."""
    from hal.backends import implementation

    return CHANNEL_OPTIONS + implementation("driver-options", "emulated")("ads1115.channels")


def _channels_check(v: Any) -> list[tuple[str, str]] | str | None:
    if not v:
        return "expected at least one channel table"
    errors: list[tuple[str, str]] = []
    names: set[str] = set()
    for i, ch in enumerate(v):
        if not isinstance(ch, dict):
            errors.append((f"[{i}]", "expected a table {name = ..., input = ...}"))
            continue
        values, errs = parse_options(channel_schema(), ch)
        errors += [(f"[{i}].{k}", m) for k, m in errs]
        if values.get("name") in names:
            errors.append((f"[{i}].name", f"expected a unique channel name, {values['name']!r} repeats"))
        names.add(values.get("name"))
    return errors or None


class ADS1115(I2CSensor):
    """One reading per configured channel."""

    CHIP = "ads1115"
    OPTIONS = [
        address_option((0x48, 0x49, 0x4A, 0x4B), 0x48),
        Option("channels", list, REQUIRED, "list of channel tables {name, input, range_v, kind, ...}",
               check=_channels_check),
    ]

    def setup(self, options: Mapping[str, Any]) -> None:
        schema = channel_schema()
        self.chans = [parse_options(schema, c)[0] for c in options["channels"]]
        for c in self.chans:
            c["range_v"] = float(c["range_v"])
            if not c["unit"]:
                c["unit"] = {"voltage": "V", "loop_4_20ma": "", "ct_clamp": "A"}[c["kind"]]

    def channels(self) -> list[tuple[str, str]]:
        return [(f"{self.name}.{c['name']}", c["unit"]) for c in self.chans]

    def init_chip(self) -> None:
        # no ID register: write a known configuration (power-down, comparator off) and read it back
        want = config_word("AIN0", 2.048, 128, single=True, start=False)
        self.dev.write_u16_be(_REG_CONFIG, want)
        got = self.dev.read_u16_be(_REG_CONFIG) & 0x7FFF
        if got != want & 0x7FFF:
            raise WrongDevice(f"{self.dev.where()}: config reads back 0x{got:04x}, wrote 0x{want:04x}: not an ADS1115")

    def single(self, mux: str, fsr: float, rate: int) -> float:
        """One single-shot conversion, in volts."""
        dev = self.dev
        dev.write_u16_be(_REG_CONFIG, config_word(mux, fsr, rate))
        self.sleep(1.0 / rate + 0.0005)
        for _ in range(20):
            if dev.read_u16_be(_REG_CONFIG) & OS_SINGLE:
                return code_to_volts(dev.read_u16_be(_REG_CONVERSION), fsr)
            self.sleep(0.2 / rate)
        raise BusTimeout(f"{dev.where()}: conversion did not complete")

    def continuous(self, mux: str, fsr: float, n: int) -> tuple[list[float], list[float]]:
        """`n` reads of the conversion register in continuous mode at 860 SPS, then back to power-down: (times in
        s on the bus clock, volts). The reads are paced at about one conversion period, but the real spacing (bus
        time, scheduling, the converter's ±10 % data rate) is whatever the timestamps say."""
        dev = self.dev
        dev.write_u16_be(_REG_CONFIG, config_word(mux, fsr, 860, single=False, start=False))
        self.sleep(2.0 * chip.conversion_s(860))  # the first result is ready after one conversion period
        times, out = [], []
        try:
            for _ in range(n):
                out.append(code_to_volts(dev.read_u16_be(_REG_CONVERSION), fsr))
                times.append(self.clock())
                self.sleep(chip.conversion_s(860))
        finally:
            dev.write_u16_be(_REG_CONFIG, config_word(mux, fsr, 860, single=True, start=False))
        return times, out

    def read_chip(self, ts: int) -> list[Reading]:
        out = []
        for c in self.chans:
            ch = f"{self.name}.{c['name']}"
            if c["kind"] == "ct_clamp":
                times, volts = self.continuous(c["input"], c["range_v"], c["samples"])
                try:
                    rms, _ = ac_rms(times, volts, c["mains_hz"])
                except ValueError as e:
                    out.append(Reading.bad(ch, f"{e}: raise samples", c["unit"], ts))
                    continue
                if max(abs(v) for v in volts) >= c["range_v"] * 32767 / 32768:
                    out.append(Reading.bad(ch, f"clamp output clipped at ±{c['range_v']} V: raise range_v", c["unit"],
                                           ts))
                else:
                    out.append(Reading(ch, ts, round(rms * c["amps_per_volt"], 4), c["unit"], Quality.GOOD))
                continue
            v = self.single(c["input"], c["range_v"], c["data_rate"])
            if abs(v) >= c["range_v"] * 32767 / 32768:
                out.append(Reading.bad(ch, f"input at full scale ±{c['range_v']} V (saturated)", c["unit"], ts))
            elif c["kind"] == "loop_4_20ma":
                ma = v / c["burden_ohm"] * 1000.0
                value, quality, err = loop_value(ma, c["range_lo"], c["range_hi"])
                out.append(Reading(ch, ts, None if value is None else round(value, 5), c["unit"], quality, err))
            else:
                out.append(Reading(ch, ts, round(v * c["scale"] + c["offset"], 6), c["unit"], Quality.GOOD))
        return out

    def close(self) -> None:
        super().close()


__all__ = ["ADS1115", "code_to_volts", "volts_to_code", "loop_value", "config_word", "ac_rms"]
