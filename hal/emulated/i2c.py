"""An emulated I2C bus: chip models at addresses, with the kernel's error behaviour and injectable faults.

It implements the smbus2 methods the drivers use. An address with no chip raises `OSError(EREMOTEIO)` (errno 121,
what i2c-bcm2835 returns for a NACK). Faults, reachable from code: `nack(address, count)` (the next transactions to
an address are not acknowledged), `stick()` / `unstick()` (a stuck bus: every transaction fails with ETIMEDOUT),
`remove(address)` (a chip unplugged). Time comes from `clock` (default `time.monotonic`); drivers pace themselves
with the bus's `clock` and `sleep`, so a test can pass a fake clock whose sleep advances time.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


class EmulatedI2CBus:
    def __init__(self, name: str = "i2c", plant: Any = None, clock: Any = None, baudrate: int = 100_000) -> None:
        self.name = name
        self.baudrate = baudrate  # the configured SCL clock: drivers check their rates against it
        self.path = ""
        self.plant = plant
        clock = clock or getattr(plant, "clock", None)  # the plant's clock (hal.clock) unless a test passes one
        self.clock: Callable[[], float] = clock or time.monotonic
        self.sleep: Callable[[float], None] = getattr(clock, "sleep", None) or time.sleep
        self.time_ns: Callable[[], int] = getattr(clock, "time_ns", None) or time.time_ns  # reading timestamps
        self.t0 = self.clock()
        if plant is not None and clock is getattr(plant, "clock", None):
            self.t0 -= plant.now()  # bus time and plant time agree: the chips see the plant's schedule
        self.lock = threading.RLock()
        self.chips: dict[int, Any] = {}
        self._nacks: dict[int, int] = {}
        self.stuck = False
        self.transactions = 0

    # -- population ---------------------------------------------------------------------------------------------
    def attach(self, address: int, chip: Any) -> Any:
        with self.lock:
            chip.bus = self
            self.chips[address] = chip
            return chip

    def place(self, address: int, model: str) -> Any:
        """Put a chip model (`adxl345`, `bme280`, `ads1115`, `ina219`) at `address` unless one is there already."""
        from hal.emulated.chips import CHIP_MODELS

        with self.lock:
            if address not in self.chips:
                self.attach(address, CHIP_MODELS[model](self.plant))
            return self.chips[address]

    def prepare(self, driver: Any) -> Any:
        """The chip model a driver expects, placed at its address and wired to the plant
        (`hal.emulated.drivers.CHIP_PREPARATION`)."""
        from hal.emulated.drivers import prepare_chip

        chip = self.place(driver.address, driver.CHIP)
        prepare_chip(chip, driver)
        return chip

    def remove(self, address: int) -> None:
        with self.lock:
            self.chips.pop(address, None)

    # -- faults -------------------------------------------------------------------------------------------------
    def nack(self, address: int, count: int = 1) -> None:
        """Do not acknowledge the next `count` transactions to `address` (-1: until `nack(address, 0)`)."""
        with self.lock:
            self._nacks[address] = count

    def stick(self) -> None:
        self.stuck = True

    def unstick(self) -> None:
        self.stuck = False

    def plant_time(self) -> float:
        """Plant seconds for the bus clock's now (the chips sample the plant on this time base)."""
        return self.clock() - self.t0

    # -- the smbus2 surface -------------------------------------------------------------------------------------
    def _chip(self, address: int) -> Any:
        self.transactions += 1
        if self.stuck:
            raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
        left = self._nacks.get(address, 0)
        if left:
            if left > 0:
                self._nacks[address] = left - 1
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))
        chip = self.chips.get(address)
        if chip is None:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))
        return chip

    def read_byte(self, address: int) -> int:
        with self.lock:
            chip = self._chip(address)
            return chip.read(chip.pointer, 1)[0]

    def write_byte(self, address: int, value: int) -> None:
        with self.lock:
            self._chip(address).pointer = value & 0xFF

    def write_quick(self, address: int) -> None:
        with self.lock:
            self._chip(address)

    def read_byte_data(self, address: int, register: int) -> int:
        with self.lock:
            return self._chip(address).read(register, 1)[0]

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        with self.lock:
            self._chip(address).write(register, bytes([value & 0xFF]))

    def read_word_data(self, address: int, register: int) -> int:
        with self.lock:
            lo, hi = self._chip(address).read(register, 2)  # SMBus words are little-endian on the wire
            return lo | (hi << 8)

    def write_word_data(self, address: int, register: int, value: int) -> None:
        with self.lock:
            self._chip(address).write(register, bytes([value & 0xFF, (value >> 8) & 0xFF]))

    def read_i2c_block_data(self, address: int, register: int, length: int, force: Any = None) -> list[int]:
        if not 0 < length <= 32:
            raise ValueError(f"I2C block length must be 1..32, got {length}")  # smbus2's I2C_SMBUS_BLOCK_MAX
        with self.lock:
            return list(self._chip(address).read(register, length))

    def write_i2c_block_data(self, address: int, register: int, data: Sequence[int], force: Any = None) -> None:
        if len(data) > 32:
            raise ValueError(f"I2C block length must be at most 32, got {len(data)}")
        with self.lock:
            self._chip(address).write(register, bytes(data))

    def close(self) -> None:
        pass


def emulated_i2c_bus(context: Any, name: str, bus_type: str, values: dict[str, Any]) -> EmulatedI2CBus:
    """The ("i2c", "emulated") backend of `hal.backends`: chips on the context's plant."""
    return EmulatedI2CBus(name, plant=context.get_plant(), baudrate=int(values["baudrate"]))


__all__ = ["EmulatedI2CBus", "emulated_i2c_bus"]
