"""Analog Devices ADXL345 3-axis accelerometer on I2C (0x53 with ALT ADDRESS low, 0x1D high), as a stream sensor.

Registers, fields, rate codes, FIFO and timing come from `hal.chips.adxl345` (data sheet Rev. E, declared once).

Reading: the FIFO runs in stream mode. Each wake-up reads INT_SOURCE once; when it shows the watermark (or the FIFO
full) the driver reads FIFO_STATUS (entries) once, then the entries back to back, six bytes each - no per-sample
status polling; between drains it sleeps about one watermark period.

Loss: the data sheet's Overrun bit in stream mode means "the FIFO is full", not "a sample was discarded", so it is
not a loss count: a drain that finds exactly 32 entries lost nothing. Loss is found by counting: a sample can only
be lost while the FIFO is full, so when a drain finds it full the driver compares the samples the chip must have
produced since the previous drain's FIFO_STATUS read (elapsed bus-clock time × the output data rate, less the
data sheet's ±10 % rate tolerance) with the 32 it holds. Only more than that is a gap: the block after it carries
`gap` = the samples lost (estimated at the nominal rate) and a block is never stitched across it.

Bus speed: the data sheet recommends 3200 and 1600 Hz only on SPI at 2 MHz or more and 800 Hz only on a bus at
400 kHz or more, the other rates scaling with it (200 Hz at 100 kHz). On I2C the driver refuses a rate above
that for the bus's `baudrate` (default 100 kHz, the Raspberry Pi's) unless the sensor sets `exceed_bus_rate`
(then it logs a warning); one six-byte FIFO read is 84 SCL clocks, 210 µs at 400 kHz and 840 µs at 100 kHz, before
any host latency. For higher rates use SPI or the RP2040 sensor node (`driver = "sensornode"`). Sample times come
from the output data rate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from hal.chips import adxl345 as chip
from hal.chips import i2c_read_s
from hal.drivers.base import address_option
from hal.errors import ConfigurationError, HalError, WrongDevice
from hal.i2c import I2CDevice, open_i2c
from hal.options import Option, at_most, in_range
from hal.types import STANDARD_GRAVITY, Block, Quality, now_ns

log = logging.getLogger("hal.adxl345")

_REG_DEVID = chip.DEVID.address
_REG_BW_RATE = chip.BW_RATE.address
_REG_POWER_CTL = chip.POWER_CTL.address
_REG_INT_SOURCE = chip.INT_SOURCE.address
_REG_DATA_FORMAT = chip.DATA_FORMAT.address
_REG_DATAX0 = chip.DATAX0.address
_REG_FIFO_CTL = chip.FIFO_CTL.address
_REG_FIFO_STATUS = chip.FIFO_STATUS.address

DEVID = chip.ID
FIFO_DEPTH = chip.FIFO_DEPTH
RANGE_BITS = chip.RANGE_CODES
RATE_CODES = {int(r): code for r, code in chip.RATE_CODES.items() if r >= 25}  # the rates offered
SCALE_G_PER_LSB = chip.SCALE_G_PER_LSB


def raw_to_ms2(raw: np.ndarray) -> np.ndarray:
    """Counts (full resolution) to m/s²."""
    return raw.astype(np.float64) * (SCALE_G_PER_LSB * STANDARD_GRAVITY)


def bus_rate_problem(rate_hz: float, baudrate: int) -> str | None:
    """Why `rate_hz` is beyond what the data sheet recommends on I2C at `baudrate`, or None."""
    top = chip.max_i2c_rate_hz(baudrate)
    if rate_hz <= top:
        return None
    busy = rate_hz * i2c_read_s(chip.SAMPLE_BYTES, baudrate)
    return (f"expected at most {top:g} Hz on I2C at {baudrate} Hz: the ADXL345 data sheet recommends 800 Hz only "
            f"with a 400 kHz bus (scaled: {top:g} Hz at {baudrate // 1000} kHz) and 1600/3200 Hz only on SPI at "
            f">= 2 MHz; {rate_hz:g} Hz would also keep the bus {busy * 100:.0f} % busy with FIFO reads alone. Use "
            f"rate_hz <= {top:g}, raise the bus's baudrate (400000, with dtparam=i2c_arm_baudrate=400000 in "
            f"/boot/firmware/config.txt), or read high rates through SPI or the RP2040 sensor node "
            f"(driver = \"sensornode\"); exceed_bus_rate = true overrides this at your own risk")


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
        Option("exceed_bus_rate", bool, False, "accept a rate_hz above the data sheet's recommendation for the I2C "
               "bus speed (logs a warning; expect FIFO overruns and gaps)"),
    ]

    @classmethod
    def validate_bus(cls, values: Mapping[str, Any], bus: Mapping[str, Any]) -> list[tuple[str, str]]:
        """At config load: the rate against the I2C bus's stated baudrate (the same check the constructor makes)."""
        if bus.get("type") != "i2c" or values.get("exceed_bus_rate"):
            return []
        baudrate = bus.get("baudrate", 100_000)
        problem = bus_rate_problem(float(values["rate_hz"]), baudrate) if isinstance(baudrate, int) else None
        return [("rate_hz", problem)] if problem else []

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
        self.baudrate = int(getattr(i2c, "baudrate", 100_000))
        problem = bus_rate_problem(self.rate_hz, self.baudrate)
        if problem and not options.get("exceed_bus_rate", False):
            raise ConfigurationError(f"{name}.rate_hz: {problem}")
        if problem:
            log.warning("%s.rate_hz: %s (exceed_bus_rate = true: going ahead)", name, problem)
        self.dev = I2CDevice(i2c, self.address, self.CHIP)
        self.sleep = getattr(i2c, "sleep", time.sleep)
        self.clock = getattr(i2c, "clock", time.monotonic)
        self.time_ns = getattr(i2c, "time_ns", now_ns)  # an emulated bus stamps blocks on its clock
        self.ready = False
        self.last_error: str | None = None
        self.counters = {"blocks": 0, "samples": 0, "checks": 0, "drains": 0, "full": 0, "overruns": 0,
                         "lost_samples": 0, "bus_errors": 0, "inits": 0}
        self._segments: list[dict[str, Any]] = []  # {gap, parts, start index}; only the last one grows
        self._index = 0  # samples (read or lost) since the first drain
        self._next_t: float | None = None  # bus-clock time of the next expected sample (after a fault: loss)
        self._last_status_t: float | None = None  # bus-clock time of the last FIFO_STATUS read (FIFO then drained)
        self._wall0 = 0
        self.worst_drain_interval_s = 0.0  # longest time between two FIFO_STATUS reads (the FIFO filling meanwhile)
        self.worst_wake_late_s = 0.0  # longest oversleep: scheduler and GIL latency of the reading thread
        i2c.prepare(self)  # an emulated bus places the chip model this driver expects (hal.emulated.drivers)

    # -- setup --------------------------------------------------------------------------------------------------
    def _init(self) -> None:
        self.counters["inits"] += 1
        dev = self.dev
        devid = dev.read_u8(_REG_DEVID)
        if devid != DEVID:
            raise WrongDevice(f"{dev.where()}: DEVID 0x{devid:02x}, expected 0x{DEVID:02x} (ADXL345)")
        dev.write_u8(_REG_POWER_CTL, 0)  # standby while configuring
        dev.write_u8(_REG_BW_RATE, chip.RATE.put(0, RATE_CODES[int(self.rate_hz)]))
        # right-justified, full resolution
        dev.write_u8(_REG_DATA_FORMAT, chip.RANGE.put(chip.FULL_RES.put(0, 1), RANGE_BITS[self.range_g]))
        dev.write_u8(_REG_FIFO_CTL, chip.FIFO_MODE.put(0, chip.FIFO_BYPASS))  # bypass clears the FIFO
        dev.write_u8(_REG_FIFO_CTL, chip.FIFO_SAMPLES.put(chip.FIFO_MODE.put(0, chip.FIFO_STREAM), self.watermark))
        dev.write_u8(_REG_POWER_CTL, chip.MEASURE.put(0, 1))
        now = self.clock()
        self._last_status_t = now
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
        """Read everything the FIFO holds once it reached the watermark (or is full; `force`: whatever it holds).
        Returns the number of entries read."""
        dev = self.dev
        source = dev.read_u8(_REG_INT_SOURCE)
        self.counters["checks"] += 1
        full_flag = chip.INT_OVERRUN.get(source)  # stream mode: "the FIFO is full", not "a sample was lost"
        if not (chip.INT_WATERMARK.get(source) or full_flag or force):
            return 0  # below the watermark: one status byte, no FIFO traffic
        entries = chip.FIFO_ENTRIES.get(dev.read_u8(_REG_FIFO_STATUS))
        now = self.clock()
        self.counters["drains"] += 1
        assert self._last_status_t is not None
        self.worst_drain_interval_s = max(self.worst_drain_interval_s, now - self._last_status_t)
        if entries == 0:
            return 0
        raw = np.empty((entries, 3), dtype=np.int16)
        for i in range(entries):  # one six-byte burst per entry: reading DATAZ1 pops the entry
            raw[i] = np.frombuffer(dev.read_bytes(_REG_DATAX0, chip.SAMPLE_BYTES), dtype="<i2")
        if full_flag or entries >= FIFO_DEPTH:
            self.counters["full"] += 1
            self._lost(self.lost_since(now - self._last_status_t, entries))
        if not self._segments:
            self._segments.append({"gap": 0, "parts": [], "start": self._index})
        self._segments[-1]["parts"].append(raw)
        self._index += entries
        self.counters["samples"] += entries
        self._last_status_t = now
        self._next_t = now + 1.0 / self.rate_hz
        return entries

    @property
    def buffer_slack_s(self) -> float:
        """How long the FIFO holds samples: the longest a reader may stay away without losing any."""
        return FIFO_DEPTH / self.rate_hz

    def lost_since(self, elapsed_s: float, entries: int) -> int:
        """Samples lost when a full FIFO holding `entries` is found `elapsed_s` after the previous drain's
        FIFO_STATUS read (the FIFO was empty then, up to what arrived during that drain's reads): zero unless even
        the slowest rate the data sheet allows (nominal - 10 %) produced more than the FIFO holds; then the
        nominal count beyond what it holds."""
        slowest = elapsed_s * self.rate_hz * (1.0 - chip.ODR_TOLERANCE)
        if slowest <= entries + 1:
            return 0
        self.counters["overruns"] += 1
        return max(1, int(round(elapsed_s * self.rate_hz)) - entries)

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
            nap = min(self.watermark / self.rate_hz, self.max_wait_s, left)
            t = self.clock()
            self.sleep(nap)
            self.worst_wake_late_s = max(self.worst_wake_late_s, self.clock() - t - nap)

    def close(self) -> None:
        if self.ready:
            try:
                self.dev.write_u8(_REG_POWER_CTL, 0)  # back to standby
            except HalError:
                pass
        self.ready = False


__all__ = ["ADXL345", "raw_to_ms2", "bus_rate_problem"]
