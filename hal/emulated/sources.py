"""Emulated sensors reading the plant directly: a vibration stream and a temperature probe.

They are paced by the context's clock (`hal.clock`: real time, or faster for tests) like the real thing:
`read_block` returns a block only once its last sample "has happened". A reader that falls far behind (a suspended
laptop) skips ahead and reports the skipped samples as a gap, as a real FIFO overrun would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from hal.options import Option, at_most, in_range
from hal.sources import HalContext
from hal.types import Block, Quality, Reading


class EmulatedVibration:
    """A high-rate accelerometer on the plant's machine (m/s²), one or more axes."""

    kind: ClassVar[str] = "stream"
    OPTIONS = [
        Option("rate_hz", (int, float), 3200.0, "sample rate in Hz", at_most(100000)),
        Option("block_size", int, 256, "samples per block", in_range(1, 65536)),
        Option("axes", list, ["x"], "axis names, e.g. [\"x\", \"y\", \"z\"]",
               lambda v: None if v and all(isinstance(a, str) for a in v) else "expected a non-empty list of names"),
        Option("max_lag_s", (int, float), 2.0, "skip ahead (and report a gap) when this far behind",
               at_most(3600)),
    ]

    def __init__(self, name: str, options: Mapping[str, Any], context: HalContext, bus: str | None = None) -> None:
        self.name = name
        self.rate_hz = float(options["rate_hz"])
        self.block_size = int(options["block_size"])
        self.axes = tuple(options["axes"])
        self.max_lag_ns = int(options["max_lag_s"] * 1e9)
        self._plant = context.get_plant()
        self._clock = context.clock
        self._next_index = 0
        self._start_ns = 0

    def open(self) -> None:
        self._start_ns = self._clock.time_ns()
        self._next_index = 0

    def _t_ns(self, index: int) -> int:
        return self._start_ns + int(round(index * 1e9 / self.rate_hz))

    def read_block(self, timeout: float) -> Block | None:
        gap = 0
        now_ns = self._clock.time_ns
        behind = now_ns() - self._t_ns(self._next_index + self.block_size)
        if behind > self.max_lag_ns:
            skip = int(behind * self.rate_hz / 1e9) // self.block_size * self.block_size
            self._next_index += skip
            gap = skip
        end_ns = self._t_ns(self._next_index + self.block_size)
        wait = (end_ns - now_ns()) / 1e9
        if wait > timeout:
            self._clock.sleep(max(timeout, 0.0))
            return None
        if wait > 0:
            self._clock.sleep(wait)
        i0 = self._next_index
        t = self._plant.t(self._start_ns) + (i0 + np.arange(self.block_size)) / self.rate_hz
        if len(self.axes) == 1:
            samples = self._plant.vibration(t, 0)
        else:
            samples = np.stack([self._plant.vibration(t, k) for k in range(len(self.axes))], axis=1)
        self._next_index += self.block_size
        return Block(self.name, self._t_ns(i0), self.rate_hz, samples, "m/s2", Quality.GOOD, gap, self.axes)

    def close(self) -> None:
        pass


class EmulatedTemperature:
    """A temperature probe on the machine's bearing (°C), with optional sensor noise and an injectable fault."""

    kind: ClassVar[str] = "slow"
    OPTIONS = [
        Option("channel", str, "", "channel name (defaults to the sensor name)"),
        Option("noise_c", (int, float), 0.05, "standard deviation of the reading noise in °C", in_range(0, 10)),
        Option("fail", bool, False, "emulate a dead probe: every read is bad"),
    ]

    def __init__(self, name: str, options: Mapping[str, Any], context: HalContext, bus: str | None = None) -> None:
        self.name = name
        self.channel = options["channel"] or name
        self.noise_c = float(options["noise_c"])
        self.fail = bool(options["fail"])
        self._plant = context.get_plant()
        self._clock = context.clock
        self._rng = np.random.default_rng()

    def open(self) -> None:
        pass

    def channels(self) -> list[tuple[str, str]]:
        return [(self.channel, "degC")]

    def poll(self) -> list[Reading]:
        ts = self._clock.time_ns()
        if self.fail:
            return [Reading.bad(self.channel, "emulated probe failure", "degC", ts)]
        value = self._plant.bearing_temperature(self._plant.t(ts)) + self._rng.normal(0.0, self.noise_c)
        return [Reading(self.channel, ts, round(float(value), 3), "degC", Quality.GOOD)]

    def close(self) -> None:
        pass


__all__ = ["EmulatedVibration", "EmulatedTemperature"]
