"""Chip models for the emulated I2C bus: the registers each driver touches, behaving like the data sheet says, and
driven by the plant (`hal.emulated.plant.Plant`) on the bus's clock.

Register addresses, fields, reset values, rate and range tables come from the chip declarations in `hal.chips` -
the same ones the drivers and `scan` use; this module owns only the behaviour (FIFO fill, conversion timing, the
values the plant puts on the inputs). Only the BME280 model still borrows from its driver: the data sheet's
compensation formulas (`hal.drivers.bme280`), which it inverts.

* `ADXL345Model`: DEVID, BW_RATE, POWER_CTL, DATA_FORMAT, FIFO_CTL/FIFO_STATUS, INT_SOURCE; a 32-entry FIFO filled
  at the output data rate with the plant's vibration (+1 g on z); stream mode drops the oldest entry when a sample
  arrives while it is full; Overrun is set when the FIFO is full (cleared by reading FIFO data), in bypass mode when
  unread data is replaced; reading DATAZ1 pops an entry; `discarded` counts what was really lost.
* `BME280Model`: chip id, reset, calibration NVM (the data sheet example's coefficients), forced and normal mode,
  the measuring bit for the data sheet's measurement time; raw values found by inverting the compensation so the
  driver reads the plant's cabinet temperature, humidity and pressure.
* `ADS1115Model`: pointer register, config with OS/MODE semantics (a single-shot conversion takes 1/DR), PGA
  saturation, MUX inputs wired by the driver's channels to plant signals (a loop current through the burden
  resistor, a CT clamp's AC voltage).
* `INA219Model`: reset, calibration, current and power computed by the chip's own equations from the plant's supply
  rail, CNVR and OVF flags.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hal.chips import ads1115 as ADS
from hal.chips import adxl345 as A
from hal.chips import bme280 as BME
from hal.chips import ina219 as INA
from hal.types import STANDARD_GRAVITY


class ChipModel:
    """256 byte-wide registers with an auto-incrementing address, as most I2C chips have."""

    name = "chip"

    def __init__(self, plant: Any = None) -> None:
        self.plant = plant
        self.bus: Any = None
        self.regs = bytearray(256)
        self.pointer = 0

    def now(self) -> float:
        return self.bus.clock() if self.bus is not None else 0.0

    def plant_time(self) -> float:
        return self.bus.plant_time() if self.bus is not None else 0.0

    def signal(self, name: str, default: float = 0.0) -> float:
        if self.plant is None:
            return default
        return self.plant.signal(name, self.plant_time())

    def read(self, reg: int, n: int) -> bytes:
        self.pointer = reg
        return bytes(self.regs[(reg + i) & 0xFF] for i in range(n))

    def write(self, reg: int, data: bytes) -> None:
        self.pointer = reg
        for i, b in enumerate(data):
            self.regs[(reg + i) & 0xFF] = b


# -- ADXL345 ----------------------------------------------------------------------------------------------------------

class ADXL345Model(ChipModel):
    """The ADXL345 per `hal.chips.adxl345` (data sheet Rev. E): registers at their reset values, a 32-entry FIFO
    filled at the output data rate; stream mode discards the oldest entry when a sample arrives while it is full,
    FIFO mode stops collecting. INT_SOURCE Overrun follows the data sheet: in FIFO, stream and trigger mode it is
    set when the FIFO is full and cleared when FIFO data is read; in bypass mode it is set when a new sample
    replaces one that was not read. `discarded` counts the samples really lost (what a test checks a driver's
    estimate against; the real chip has no such register)."""

    name = "adxl345"
    DEPTH = A.FIFO_DEPTH

    def __init__(self, plant: Any = None) -> None:
        super().__init__(plant)
        for address, value in A.CHIP.reset_values().items():
            self.regs[address] = value
        self.fifo: list[tuple[int, int, int]] = []
        self.overrun = False
        self.discarded = 0  # samples lost: replaced in stream mode, not stored in FIFO mode (emulation only)
        self.latest = (0, 0, 0)
        self._latest_unread = False
        self._t_start = 0.0
        self._k_next = 0
        self.gravity_axis = 2
        self._cache: tuple[int, list[tuple[int, int, int]]] | None = None  # (first index, encoded samples)

    @property
    def rate(self) -> float:
        return A.RATE_OF_CODE.get(A.RATE.get(self.regs[A.BW_RATE.address]), 100.0)

    @property
    def measuring(self) -> bool:
        return bool(A.MEASURE.get(self.regs[A.POWER_CTL.address]))

    @property
    def fifo_mode(self) -> int:
        return A.FIFO_MODE.get(self.regs[A.FIFO_CTL.address])

    def _encode(self, a_ms2: np.ndarray) -> np.ndarray:
        fmt = self.regs[A.DATA_FORMAT.address]
        rng = {v: k for k, v in A.RANGE_CODES.items()}[A.RANGE.get(fmt)]
        full = bool(A.FULL_RES.get(fmt))
        lim = 1 << (A.data_bits(full, rng) - 1)
        return np.clip(np.round(a_ms2 / STANDARD_GRAVITY / A.lsb_g(full, rng)), -lim, lim - 1).astype(np.int64)

    def _advance(self) -> None:
        if not self.measuring:
            return
        rate = self.rate
        k_end = int(math.floor((self.now() - self._t_start) * rate + 1e-9)) + 1  # samples taken so far
        n = k_end - self._k_next
        if n <= 0:
            return
        mode = self.fifo_mode
        keep = self.DEPTH + 1
        if n > keep:  # only the newest DEPTH + 1 can matter: the older ones are lost whatever the mode
            skipped = n - keep
            self._k_next += skipped
            n = keep
            self.discarded += skipped if mode != A.FIFO_BYPASS else 0
            self.overrun = True  # FIFO modes: full; bypass: unread data replaced
        samples = self._samples(self._k_next, n)
        self._k_next = k_end
        if mode == A.FIFO_BYPASS:
            if self._latest_unread or n > 1:
                self.overrun = True  # new data replaced unread data in DATAX..DATAZ
            self.latest = samples[-1]
            self._latest_unread = True
            self.fifo = []
            return
        self.latest = samples[-1]
        for s in samples:
            if len(self.fifo) >= self.DEPTH:
                self.discarded += 1
                if mode == A.FIFO_FIFO:  # FIFO mode: stop collecting when full
                    continue
                self.fifo.pop(0)  # stream / trigger: the oldest is replaced
            self.fifo.append(s)
        if len(self.fifo) >= self.DEPTH:
            self.overrun = True  # "set when the FIFO is filled"

    CHUNK_S = 0.05  # samples are computed from the plant this far ahead, in one vectorised call per chunk

    def _samples(self, k0: int, n: int) -> list[tuple[int, int, int]]:
        """Encoded samples k0 .. k0+n-1 of the current measurement (from the chunk cache)."""
        c = self._cache
        if c is None or k0 < c[0] or k0 + n > c[0] + len(c[1]):
            rate = self.rate
            m = max(n, int(rate * self.CHUNK_S), 1)
            t = self._t_start - self.bus.t0 + (k0 + np.arange(m)) / rate
            axes = []
            for axis in range(3):
                a = self.plant.vibration(t, axis) if self.plant is not None else np.zeros(m)
                if axis == self.gravity_axis:
                    a = a + STANDARD_GRAVITY
                axes.append(self._encode(a))
            c = self._cache = (k0, list(zip(*(a.tolist() for a in axes))))
        i = k0 - c[0]
        return c[1][i:i + n]

    def _int_source(self) -> int:
        entries = len(self.fifo)
        v = self.regs[A.INT_SOURCE.address] & ~(A.INT_DATA_READY.mask | A.INT_WATERMARK.mask | A.INT_OVERRUN.mask)
        mode = self.fifo_mode
        if entries or (mode == A.FIFO_BYPASS and self._latest_unread):
            v |= A.INT_DATA_READY.mask
        if mode != A.FIFO_BYPASS and entries >= A.FIFO_SAMPLES.get(self.regs[A.FIFO_CTL.address]):
            v |= A.INT_WATERMARK.mask
        if self.overrun:
            v |= A.INT_OVERRUN.mask
        return v

    def read(self, reg: int, n: int) -> bytes:
        self._advance()
        out = bytearray()
        popped = False
        data0 = A.DATAX0.address
        for i in range(n):
            r = (reg + i) & 0xFF
            if data0 <= r <= data0 + 5:
                s = self.fifo[0] if (self.fifo and self.fifo_mode) else self.latest
                word = s[(r - data0) // 2] & 0xFFFF
                out.append(word & 0xFF if (r - data0) % 2 == 0 else word >> 8)
                if r == data0 + 5:
                    if self.fifo and self.fifo_mode:
                        popped = True
                    elif not self.fifo_mode:
                        self._latest_unread = False
                        self.overrun = False
            elif r == A.INT_SOURCE.address:
                out.append(self._int_source())
            elif r == A.FIFO_STATUS.address:
                out.append(A.FIFO_ENTRIES.put(0, min(len(self.fifo), self.DEPTH)))
            else:
                out.append(self.regs[r])
        if popped:
            self.fifo.pop(0)
            self.overrun = False  # "cleared when the contents of the FIFO are read"
        self.pointer = reg
        return bytes(out)

    def write(self, reg: int, data: bytes) -> None:
        self._advance()
        readonly = {r.address for r in A.CHIP.registers.values() if r.readonly} | set(range(0x32, 0x38))
        for i, b in enumerate(data):
            r = (reg + i) & 0xFF
            if r in readonly:
                continue
            was_measuring = self.measuring
            self.regs[r] = b
            if r in (A.BW_RATE.address, A.POWER_CTL.address, A.DATA_FORMAT.address):
                self._cache = None  # rate, measurement start or format changed
            if r == A.POWER_CTL.address and self.measuring and not was_measuring:
                self._t_start = self.now()
                self._k_next = 0
            if r == A.FIFO_CTL.address and A.FIFO_MODE.get(b) == A.FIFO_BYPASS:
                self.fifo = []  # bypass clears the FIFO
                self.overrun = False


# -- BME280 -----------------------------------------------------------------------------------------------------------

class BME280Model(ChipModel):
    name = "bme280"

    def __init__(self, plant: Any = None, calibration: Any = None) -> None:
        from hal.drivers.bme280 import Calibration

        super().__init__(plant)
        self.cal = calibration or Calibration(27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600,
                                              6000, 75, 362, 0, 313, 50, 30)
        c, h = self.cal.to_registers()
        self.regs[0x88:0x88 + 26] = c
        self.regs[0xE1:0xE1 + 7] = h
        self.regs[BME.ID.address] = BME.CHIP_ID
        self._busy_until = 0.0
        self._reset()
        self.environment: tuple[float, float, float] | None = None  # (degC, %RH, hPa) override
        self.temperature_signal = "cabinet_temperature"  # the plant signal the temperature follows

    def _reset(self) -> None:
        for r in (0xF2, 0xF3, 0xF4, 0xF5):
            self.regs[r] = 0
        self.regs[0xF7:0xFF] = BME.SKIPPED_DATA  # skipped-measurement values

    def _environment(self) -> tuple[float, float, float]:
        if self.environment is not None:
            return self.environment
        return (self.signal(self.temperature_signal, 25.0), self.signal("cabinet_humidity", 40.0),
                self.signal("barometric_pressure", 1013.25))

    def _measure(self) -> None:
        from hal.drivers.bme280 import compensate_humidity, compensate_pressure, compensate_temperature

        t_c, rh, hpa = self._environment()
        cal = self.cal

        def search(f: Any, target: float, lo: int, hi: int, increasing: bool) -> int:
            while lo < hi:
                mid = (lo + hi) // 2
                below = f(mid) < target if increasing else f(mid) > target
                if below:
                    lo = mid + 1
                else:
                    hi = mid
            return lo

        adc_t = search(lambda a: compensate_temperature(a, cal)[0], t_c * 100, 0, (1 << 20) - 1, True)
        t_fine = compensate_temperature(adc_t, cal)[1]
        adc_p = search(lambda a: compensate_pressure(a, t_fine, cal), hpa * 100 * 256, 0, (1 << 20) - 1, False)
        adc_h = search(lambda a: compensate_humidity(a, t_fine, cal), rh * 1024, 0, (1 << 16) - 1, True)
        osrs_t, osrs_p = (self.regs[0xF4] >> 5) & 7, (self.regs[0xF4] >> 2) & 7
        osrs_h = self.regs[0xF2] & 7
        p = adc_p if osrs_p else 0x80000
        t = adc_t if osrs_t else 0x80000
        h = adc_h if osrs_h else 0x8000
        self.regs[0xF7:0xFF] = bytes([p >> 12, (p >> 4) & 0xFF, (p & 0xF) << 4, t >> 12, (t >> 4) & 0xFF,
                                      (t & 0xF) << 4, h >> 8, h & 0xFF])

    def read(self, reg: int, n: int) -> bytes:
        measuring = self.now() < self._busy_until
        self.regs[0xF3] = 0x08 if measuring else 0x00
        if (self.regs[0xF4] & 0b11) == 0b11 and 0xF7 <= reg <= 0xFE:
            self._measure()  # normal mode: a fresh result at every read
        return super().read(reg, n)

    def write(self, reg: int, data: bytes) -> None:
        for i, b in enumerate(data):
            r = (reg + i) & 0xFF
            if r == 0xE0:
                if b == 0xB6:
                    self._reset()
                continue
            if r in (0xD0, 0xF3) or 0x88 <= r <= 0xA1 or 0xE1 <= r <= 0xF0 or r >= 0xF7:
                continue  # read-only
            self.regs[r] = b
            if r == 0xF4 and (b & 0b11) in (0b01, 0b10):  # forced mode: one measurement, then sleep
                f = BME.OVERSAMPLING_OF_CODE
                ms = BME.measurement_time_max_ms(f[BME.OSRS_T.get(b)], f[BME.OSRS_P.get(b)],
                                                 f[BME.OSRS_H.get(self.regs[BME.CTRL_HUM.address])])
                self._measure()
                self._busy_until = self.now() + ms / 1000.0
                self.regs[0xF4] = b & ~0b11


# -- ADS1115 ----------------------------------------------------------------------------------------------------------

class ADS1115Model(ChipModel):
    """16-bit registers behind a pointer; inputs wired to functions of plant time returning volts."""

    name = "ads1115"
    FSR = ADS.FSR_OF_CODE
    RATES = ADS.RATE_OF_CODE
    MUX_NAMES = ADS.MUX_OF_CODE

    def __init__(self, plant: Any = None) -> None:
        super().__init__(plant)
        self.words = dict(ADS.CHIP.reset_values())
        self.inputs: dict[str, Any] = {}  # mux name -> f(plant time) -> volts
        self._done_at = 0.0
        self._started = 0.0

    def wire(self, channel: dict[str, Any]) -> None:
        """Connect the physical signal a driver's channel describes to its input."""
        kind, sig = channel["kind"], channel.get("signal", "")
        if kind == "loop_4_20ma":
            burden = channel["burden_ohm"]
            name = sig or "loop_current_ma"
            self.inputs[channel["input"]] = lambda t, n=name: self._sig(n, t) / 1000.0 * burden
        elif kind == "ct_clamp":
            apv = channel["amps_per_volt"]
            self.inputs[channel["input"]] = (
                lambda t: float(self.plant.motor_current_waveform(t, 0)) / apv if self.plant is not None else 0.0)
        elif sig:
            scale, offset = channel.get("scale", 1.0) or 1.0, channel.get("offset", 0.0)
            self.inputs[channel["input"]] = lambda t, n=sig: (self._sig(n, t) - offset) / scale

    def _sig(self, name: str, t: float) -> float:
        return self.plant.signal(name, t) if self.plant is not None else 0.0

    def _convert(self, t: float) -> int:
        cfg = self.words[1]
        mux = self.MUX_NAMES[(cfg >> 12) & 7]
        fsr = self.FSR[(cfg >> 9) & 7]
        f = self.inputs.get(mux)
        volts = f(t) if f is not None else 0.0
        code = int(round(volts / fsr * 32768.0))
        return min(max(code, -32768), 32767) & 0xFFFF

    def _update(self) -> None:
        cfg = self.words[1]
        now = self.now()
        if not cfg & 0x0100:  # continuous: the latest completed conversion
            rate = self.RATES[(cfg >> 5) & 7]
            k = math.floor((now - self._started) * rate)
            if k >= 1:
                self.words[0] = self._convert(self._started - self.bus.t0 + k / rate)
            return
        if self._done_at and now >= self._done_at:
            self.words[0] = self._convert(self._done_at - self.bus.t0)
            self.words[1] = cfg | 0x8000
            self._done_at = 0.0

    def read(self, reg: int, n: int) -> bytes:
        self._update()
        self.pointer = reg & 0b11
        w = self.words[self.pointer]
        return bytes([w >> 8, w & 0xFF] * ((n + 1) // 2))[:n]

    def write(self, reg: int, data: bytes) -> None:
        self._update()
        self.pointer = reg & 0b11
        if len(data) < 2:
            return
        w = (data[0] << 8) | data[1]
        if self.pointer == 0:
            return  # conversion register is read-only
        if self.pointer != 1:
            self.words[self.pointer] = w
            return
        now = self.now()
        if w & 0x0100:  # single-shot / power-down
            if w & 0x8000:  # start a conversion: OS reads 0 until it completes
                rate = self.RATES[(w >> 5) & 7]
                self.words[1] = w & 0x7FFF
                self._done_at = now + 1.0 / rate
                return
            self.words[1] = w | 0x8000
            return
        self.words[1] = w & 0x7FFF
        self._started = now


# -- INA219 -----------------------------------------------------------------------------------------------------------

class INA219Model(ChipModel):
    name = "ina219"
    PG_FS = {code: fs for fs, code in INA.PG_FULL_SCALE_V.items()}

    def __init__(self, plant: Any = None) -> None:
        super().__init__(plant)
        self.shunt_ohm = 0.1
        self.words = {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, **INA.CHIP.reset_values()}
        self.rail: tuple[float, float] | None = None  # (bus volts, amps) override

    def _update(self) -> None:
        volts, amps = self.rail if self.rail is not None else (self.signal("supply_voltage", 12.0),
                                                               self.signal("supply_current", 0.0))
        cfg = self.words[0]
        fs = self.PG_FS[(cfg >> 11) & 3]
        vshunt = max(min(amps * self.shunt_ohm, fs), -fs)
        shunt = int(round(vshunt / 10e-6))
        bus_fs = 32.0 if cfg & (1 << 13) else 16.0
        bus = int(round(min(max(volts, 0.0), bus_fs) / 0.004))
        cal = self.words[5]
        current = (shunt * cal) // 4096 if shunt >= 0 else -((-shunt * cal) // 4096)
        power = abs(current) * bus // 5000
        ovf = not (-32768 <= current <= 32767) or power > 0xFFFF
        self.words[1] = shunt & 0xFFFF
        self.words[2] = (bus << 3) | 0b10 | (1 if ovf else 0)
        self.words[4] = (current & 0xFFFF) if cal else 0
        self.words[3] = (min(power, 0xFFFF)) if cal else 0

    def read(self, reg: int, n: int) -> bytes:
        self.pointer = reg
        if reg in (1, 2, 3, 4):
            self._update()
        w = self.words.get(reg, 0)
        return bytes([w >> 8, w & 0xFF] * ((n + 1) // 2))[:n]

    def write(self, reg: int, data: bytes) -> None:
        self.pointer = reg
        if len(data) < 2 or reg not in (0, 5):
            return
        w = (data[0] << 8) | data[1]
        if reg == INA.CONFIG.address and INA.RST.get(w):  # RST: all registers to their power-on values
            self.words = {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, **INA.CHIP.reset_values()}
            return
        self.words[reg] = w & 0xFFFE if reg == 5 else w


CHIP_MODELS = {"adxl345": ADXL345Model, "bme280": BME280Model, "ads1115": ADS1115Model, "ina219": INA219Model}

__all__ = ["ChipModel", "ADXL345Model", "BME280Model", "ADS1115Model", "INA219Model", "CHIP_MODELS"]
