"""Analog Devices ADXL345 3-axis accelerometer on I2C (0x53 with ALT ADDRESS low, 0x1D high), as a stream sensor.

Source: Analog Devices, "ADXL345 Digital Accelerometer" data sheet Rev. E: register map (table 19), BW_RATE codes
(table 7: 0x0F = 3200 Hz ... 0x0A = 100 Hz), DATA_FORMAT (FULL_RES: 3.9 mg/LSB typical in every range, ±16 g
13-bit), FIFO (section "FIFO": 32 entries; stream mode keeps the newest 32; the watermark is FIFO_CTL samples[4:0];
INT_SOURCE Overrun is set when unread data is replaced), and "Retrieving data from FIFO": each entry is read as one
six-byte burst DATAX0..DATAZ1, which pops it.

Reading: the FIFO runs in stream mode. Each drain reads INT_SOURCE (overrun), FIFO_STATUS (entries) once, then the
entries back to back, six bytes each - no per-sample status polling; between drains the driver sleeps about one
watermark period. An overrun means samples were lost: the block after it carries `gap` = the number of samples
lost, estimated from the elapsed time, and a block is never stitched across a gap. The data sheet recommends SPI
for 3200 and 1600 Hz; at 400 kHz I2C a six-byte read takes about 0.2 ms, so 3200 Hz leaves little margin - use
800 Hz or less on a busy I2C bus. Sample times come from the output data rate (the chip's oscillator is ±10 %
per the data sheet, so long-run timestamps drift; windows are short).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from hal.drivers.base import address_option
from hal.errors import HalError, WrongDevice
from hal.i2c import I2CDevice, open_i2c
from hal.options import Option, at_most, in_range
from hal.types import Block, Quality, now_ns

# -- registers (data sheet table 19) -------------------------------------------------------------------------------
_REG_DEVID = 0x00  # 0xE5
_REG_BW_RATE = 0x2C  # LOW_POWER[4] Rate[3:0]
_REG_POWER_CTL = 0x2D  # Link[5] AUTO_SLEEP[4] Measure[3] Sleep[2] Wakeup[1:0]
_REG_INT_SOURCE = 0x30  # DATA_READY[7] ... Watermark[1] Overrun[0]
_REG_DATA_FORMAT = 0x31  # SELF_TEST[7] SPI[6] INT_INVERT[5] FULL_RES[3] Justify[2] Range[1:0]
_REG_DATAX0 = 0x32  # DATAX0, DATAX1, DATAY0, DATAY1, DATAZ0, DATAZ1 (little-endian, two's complement)
_REG_FIFO_CTL = 0x38  # FIFO_MODE[7:6] Trigger[5] Samples[4:0]
_REG_FIFO_STATUS = 0x39  # FIFO_TRIG[7] Entries[5:0]

DEVID = 0xE5
MEASURE = 1 << 3
FULL_RES = 1 << 3
INT_DATA_READY, INT_WATERMARK, INT_OVERRUN = 1 << 7, 1 << 1, 1 << 0
FIFO_BYPASS, FIFO_FIFO, FIFO_STREAM, FIFO_TRIGGER = 0b00, 0b01, 0b10, 0b11
FIFO_DEPTH = 32
RANGE_BITS = {2: 0b00, 4: 0b01, 8: 0b10, 16: 0b11}
RATE_CODES = {3200: 0x0F, 1600: 0x0E, 800: 0x0D, 400: 0x0C, 200: 0x0B, 100: 0x0A, 50: 0x09, 25: 0x08}
SCALE_G_PER_LSB = 0.0039  # full resolution, all ranges, typical (data sheet specifications table)
STANDARD_GRAVITY = 9.80665  # m/s² per g


def raw_to_ms2(raw: np.ndarray) -> np.ndarray:
    """Counts (full resolution) to m/s²."""
    return raw.astype(np.float64) * (SCALE_G_PER_LSB * STANDARD_GRAVITY)


class ADXL345:
    """Stream sensor: `Block`s of shape (n, 3), axes x, y, z, in m/s² (gravity included)."""

    kind: ClassVar[str] = "stream"
    CHIP = "adxl345"
    OPTIONS = [
        address_option((0x53, 0x1D), 0x53),
        Option("rate_hz", int, 800, "output data rate", choices=tuple(sorted(RATE_CODES))),
        Option("range_g", int, 16, "measurement range in g (full resolution: 3.9 mg/LSB in every range)",
               choices=tuple(RANGE_BITS)),
        Option("block_size", int, 256, "samples per block", in_range(1, 65536)),
        Option("watermark", int, 16, "FIFO entries that trigger a drain", in_range(1, 31)),
        Option("max_wait_s", (int, float), 0.5, "longest single sleep while waiting for the FIFO", at_most(10)),
    ]

    def __init__(self, name: str, options: Mapping[str, Any], context: Any, bus: str | None = None) -> None:
        self.name = name
        self.rate_hz = float(options["rate_hz"])
        self.range_g = int(options["range_g"])
        self.block_size = int(options["block_size"])
        self.watermark = int(options["watermark"])
        self.max_wait_s = float(options["max_wait_s"])
        self.axes = ("x", "y", "z")
        i2c = open_i2c(context, bus, name)
        self.address = int(options["address"])
        if hasattr(i2c, "place"):
            i2c.place(self.address, self.CHIP)
        self.dev = I2CDevice(i2c, self.address, self.CHIP)
        self.sleep = getattr(i2c, "sleep", time.sleep)
        self.clock = getattr(i2c, "clock", time.monotonic)
        self.time_ns = getattr(i2c, "time_ns", now_ns)  # an emulated bus stamps blocks on its clock
        self.ready = False
        self.last_error: str | None = None
        self.counters = {"blocks": 0, "samples": 0, "checks": 0, "drains": 0, "overruns": 0, "lost_samples": 0, "bus_errors": 0,
                         "inits": 0}
        self._segments: list[dict[str, Any]] = []  # {gap, parts, start index}; only the last one grows
        self._index = 0  # samples (read or lost) since the first drain
        self._next_t: float | None = None  # bus-clock time of the next expected sample
        self._wall0 = 0

    # -- setup --------------------------------------------------------------------------------------------------
    def _init(self) -> None:
        self.counters["inits"] += 1
        dev = self.dev
        devid = dev.read_u8(_REG_DEVID)
        if devid != DEVID:
            raise WrongDevice(f"{dev.where()}: DEVID 0x{devid:02x}, expected 0x{DEVID:02x} (ADXL345)")
        dev.write_u8(_REG_POWER_CTL, 0)  # standby while configuring
        dev.write_u8(_REG_BW_RATE, RATE_CODES[int(self.rate_hz)])
        dev.write_u8(_REG_DATA_FORMAT, FULL_RES | RANGE_BITS[self.range_g])  # right-justified, full resolution
        dev.write_u8(_REG_FIFO_CTL, FIFO_BYPASS << 6)  # bypass clears the FIFO
        dev.write_u8(_REG_FIFO_CTL, (FIFO_STREAM << 6) | self.watermark)
        dev.write_u8(_REG_POWER_CTL, MEASURE)
        now = self.clock()
        if self._next_t is not None:  # re-initialised after a fault: every sample since the last one read is lost
            self._lost(max(1, int(round((now - self._next_t) * self.rate_hz)) + 1))
        self._next_t = now + 1.0 / self.rate_hz
        self.ready = True

    def open(self) -> None:
        self._wall0 = self.time_ns()
        try:
            self._init()
        except WrongDevice:
            raise
        except HalError as e:
            self._fault(e)

    def _fault(self, e: Exception) -> None:
        self.ready = False
        self.counters["bus_errors"] += 1
        self.last_error = str(e)

    def _lost(self, n: int) -> None:
        """`n` samples were lost: the samples that follow start a new segment carrying the gap."""
        if n <= 0:
            return
        self.counters["lost_samples"] += n
        self._index += n
        if self._segments and not self._segments[-1]["parts"]:
            self._segments[-1]["gap"] += n
            self._segments[-1]["start"] = self._index
        else:
            self._segments.append({"gap": n, "parts": [], "start": self._index})

    # -- reading ------------------------------------------------------------------------------------------------
    def drain(self, force: bool = False) -> int:
        """Read everything the FIFO holds once it reached the watermark (or overran; `force`: whatever it holds).
        Returns the number of entries read."""
        dev = self.dev
        source = dev.read_u8(_REG_INT_SOURCE)
        self.counters["checks"] += 1
        if not source & (INT_WATERMARK | INT_OVERRUN) and not force:
            return 0  # below the watermark: one status byte, no FIFO traffic
        entries = dev.read_u8(_REG_FIFO_STATUS) & 0x3F
        now = self.clock()
        self.counters["drains"] += 1
        if entries == 0:
            return 0
        raw = np.empty((entries, 3), dtype=np.int16)
        for i in range(entries):  # one six-byte burst per entry: reading DATAZ1 pops the entry
            raw[i] = np.frombuffer(dev.read_bytes(_REG_DATAX0, 6), dtype="<i2")
        assert self._next_t is not None
        oldest_t = now - (entries - 1) / self.rate_hz
        if source & INT_OVERRUN:
            self.counters["overruns"] += 1
            self._lost(max(1, int(round((oldest_t - self._next_t) * self.rate_hz))))
        if not self._segments:
            self._segments.append({"gap": 0, "parts": [], "start": self._index})
        self._segments[-1]["parts"].append(raw)
        self._index += entries
        self.counters["samples"] += entries
        self._next_t = now + 1.0 / self.rate_hz
        return entries

    def _ready_block(self) -> Block | None:
        """The next block: `block_size` samples of the oldest segment, or all of it once a gap has closed it."""
        if not self._segments:
            return None
        seg = self._segments[0]
        have = sum(len(p) for p in seg["parts"])
        closed = len(self._segments) > 1
        if have == 0 or (have < self.block_size and not closed):
            return None
        data = np.concatenate(seg["parts"]) if len(seg["parts"]) > 1 else seg["parts"][0]
        take, rest = data[: self.block_size], data[self.block_size:]
        t0 = self._wall0 + int(round(seg["start"] * 1e9 / self.rate_hz))
        gap = seg["gap"]
        if rest.size or not closed:
            self._segments[0] = {"gap": 0, "parts": [rest] if rest.size else [], "start": seg["start"] + len(take)}
        else:
            self._segments.pop(0)
        self.counters["blocks"] += 1
        return Block(self.name, t0, self.rate_hz, raw_to_ms2(take), "m/s2", Quality.GOOD, int(gap), self.axes)

    def read_block(self, timeout: float) -> Block | None:
        deadline = self.clock() + max(timeout, 0.0)
        while True:
            block = self._ready_block()
            if block is not None:
                return block
            try:
                if not self.ready:
                    self._init()
                self.drain()
            except HalError as e:  # a bus fault: counted, reported through last_error and the next block's gap
                self._fault(e)
            block = self._ready_block()
            if block is not None:
                return block
            left = deadline - self.clock()
            if left <= 0:
                return None
            self.sleep(min(self.watermark / self.rate_hz, self.max_wait_s, left))

    def close(self) -> None:
        if self.ready:
            try:
                self.dev.write_u8(_REG_POWER_CTL, 0)  # back to standby
            except HalError:
                pass
        self.ready = False


__all__ = ["ADXL345", "raw_to_ms2"]
