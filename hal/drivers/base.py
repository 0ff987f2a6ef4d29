"""What every I2C chip driver shares: its bus and address, the emulated chip placed for it, fault handling.

A subclass sets `CHIP` (its name, also the emulated chip model), `OPTIONS` (with `address_option`), `CHANNELS`
(suffix, unit) and implements `setup(options)`, `init_chip()` (probe the ID register, configure) and
`read_chip(ts) -> list[Reading]`. Bus faults never escape `poll()`: every channel comes back `bad` with the error,
the fault is counted, and the chip is initialised again on the next poll (it may have been power-cycled).
`open()` raises only `WrongDevice` (a different chip answers: a wiring or configuration error); a chip that does
not answer at start-up is a fault like any other, retried on every poll.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from hal.errors import BusError, HalError, WrongDevice
from hal.i2c import I2CDevice, open_i2c
from hal.options import Option
from hal.types import Reading, now_ns


def address_option(addresses: tuple[int, ...], default: int) -> Option:
    listed = ", ".join(f"0x{a:02x}" for a in addresses)

    def check(v: Any) -> str | None:
        return None if v in addresses else f"expected the chip's I2C address, one of {listed}"
    return Option("address", int, default, f"I2C address ({listed}); TOML accepts 0x.. hex", check)


class I2CSensor:
    kind: ClassVar[str] = "slow"
    CHIP: ClassVar[str] = ""
    CHANNELS: ClassVar[tuple[tuple[str, str], ...]] = ()
    OPTIONS: ClassVar[list[Option]] = []

    def __init__(self, name: str, options: Mapping[str, Any], context: Any, bus: str | None = None) -> None:
        self.name = name
        self.options = dict(options)
        self.bus_name = bus
        i2c = open_i2c(context, bus, name)
        self.address = int(options["address"])
        self.dev = I2CDevice(i2c, self.address, self.CHIP)
        self.sleep = getattr(i2c, "sleep", time.sleep)
        self.clock = getattr(i2c, "clock", time.monotonic)
        self.time_ns = getattr(i2c, "time_ns", now_ns)  # an emulated bus stamps readings on its clock
        self.ready = False
        self.last_error: str | None = None
        self.counters = {"polls": 0, "good": 0, "bad": 0, "bus_errors": 0, "inits": 0}
        self.setup(self.options)
        i2c.prepare(self)  # an emulated bus places and wires the chip this driver expects (hal.emulated.drivers)

    # -- for subclasses -----------------------------------------------------------------------------------------
    def setup(self, options: Mapping[str, Any]) -> None:
        pass

    def init_chip(self) -> None:
        raise NotImplementedError

    def read_chip(self, ts: int) -> list[Reading]:
        raise NotImplementedError

    def channels(self) -> list[tuple[str, str]]:
        return [(f"{self.name}.{suffix}", unit) for suffix, unit in self.CHANNELS]

    def bad_readings(self, error: str, ts: int) -> list[Reading]:
        return [Reading.bad(ch, error, unit, ts) for ch, unit in self.channels()]

    # -- SlowSource ---------------------------------------------------------------------------------------------
    def _init(self) -> None:
        self.counters["inits"] += 1
        self.init_chip()
        self.ready = True

    def open(self) -> None:
        try:
            self._init()
        except WrongDevice:
            raise
        except BusError as e:
            self._fault(e)

    def _fault(self, e: HalError) -> str:
        self.ready = False
        self.counters["bus_errors"] += 1
        self.last_error = str(e)
        return str(e)

    def poll(self) -> list[Reading]:
        self.counters["polls"] += 1
        ts = self.time_ns()
        try:
            if not self.ready:
                self._init()
            readings = self.read_chip(ts)
        except HalError as e:  # bus faults, and a chip that changed identity: bad values, never an exception
            readings = self.bad_readings(self._fault(e), ts)
        for r in readings:
            self.counters["good" if r.value is not None else "bad"] += 1
        return readings

    def close(self) -> None:
        self.ready = False


__all__ = ["I2CSensor", "address_option"]
