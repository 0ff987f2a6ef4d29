"""I2C: one bus object per configured bus, real (smbus2 on /dev/i2c-N) or emulated (the ("i2c", "emulated") row of
`hal.backends`, never imported from here), and the register accessor the chip drivers are written against.

The seam is the smbus2 method subset drivers use (`read_byte`, `read_byte_data`, `write_byte_data`,
`read_i2c_block_data`, `write_i2c_block_data`); the emulated bus implements the same methods over chip models.
`I2CDevice` adds the chip's address, a per-bus lock (several drivers, one adapter) and typed errors: an absent
address (the kernel's EREMOTEIO/ENXIO) is `DeviceNotFound`, a stuck bus (ETIMEDOUT) is `BusStuck`, anything else
`BusError`, each naming bus and address.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Sequence
from typing import Any

from hal.errors import BusError, BusStuck, DeviceNotFound

_NO_ACK = {errno.EREMOTEIO, errno.ENXIO, errno.EIO}


class RealI2CBus:
    """smbus2.SMBus on /dev/i2c-N, opened on first use."""

    def __init__(self, name: str, number: int, baudrate: int = 100_000) -> None:
        self.name = name
        self.number = number
        self.baudrate = baudrate  # as configured (the kernel's dtparam sets the real clock)
        self.path = f"/dev/i2c-{number}"
        self.lock = threading.RLock()
        self._smbus: Any = None
        self.clock = time.monotonic
        self.sleep = time.sleep

    def _bus(self) -> Any:
        if self._smbus is None:
            from smbus2 import SMBus
            self._smbus = SMBus(self.number)
        return self._smbus

    SMBUS_METHODS = frozenset({"read_byte", "write_byte", "write_quick", "read_byte_data", "write_byte_data",
                               "read_word_data", "write_word_data", "read_i2c_block_data", "write_i2c_block_data",
                               "i2c_rdwr"})

    def prepare(self, driver: Any) -> None:
        """Nothing to prepare: the chip is on the board (an emulated bus places a chip model here)."""

    def open(self) -> None:
        """Open /dev/i2c-N now (raises OSError: ENOENT if the interface is not enabled, EACCES without rights)."""
        self._bus()

    def __getattr__(self, method: str) -> Any:  # the smbus2 methods, opening the adapter on first use
        if method not in self.SMBUS_METHODS:
            raise AttributeError(method)
        return getattr(self._bus(), method)

    def close(self) -> None:
        if self._smbus is not None:
            try:
                self._smbus.close()
            finally:
                self._smbus = None


def open_i2c(context: Any, bus: str | None, sensor: str = "i2c") -> Any:
    """The shared bus object of a configured i2c bus."""
    from hal.backends import open_bus
    from hal.buses import bus_config

    bus_type, values, emulated = bus_config(context, bus, ("i2c",), sensor)
    return open_bus(context, "i2c", bus, bus_type, values, emulated)


def real_i2c_bus(context: Any, name: str, bus_type: str, values: dict[str, Any]) -> RealI2CBus:
    """The ("i2c", "real") backend of `hal.backends`."""
    return RealI2CBus(name, int(values["bus"]), int(values["baudrate"]))


class I2CDevice:
    """A chip at `address` on `bus`: register reads and writes with typed, located errors."""

    def __init__(self, bus: Any, address: int, chip: str = "chip") -> None:
        self.bus = bus
        self.address = address
        self.chip = chip
        self.lock = getattr(bus, "lock", None) or threading.RLock()

    def where(self) -> str:
        path = getattr(self.bus, "path", "")
        return f"I2C bus {self.bus.name}{f' ({path})' if path else ''} address 0x{self.address:02x} ({self.chip})"

    def _call(self, what: str, method: str, *args: Any) -> Any:
        try:
            with self.lock:
                return getattr(self.bus, method)(self.address, *args)  # a real bus opens /dev/i2c-N here
        except OSError as e:
            code = e.errno
            if code in _NO_ACK:
                raise DeviceNotFound(f"{self.where()}: no acknowledge on {what} (errno {code}, "
                                     f"{errno.errorcode.get(code, '?')})") from None
            if code == errno.ETIMEDOUT:
                raise BusStuck(f"{self.where()}: bus timed out on {what} (SDA/SCL held low?)") from None
            raise BusError(f"{self.where()}: {what} failed: {e}") from None

    def read_u8(self, reg: int) -> int:
        return self._call(f"read 0x{reg:02x}", "read_byte_data", reg)

    def write_u8(self, reg: int, value: int) -> None:
        self._call(f"write 0x{reg:02x}", "write_byte_data", reg, value & 0xFF)

    def read_bytes(self, reg: int, n: int) -> bytes:
        return bytes(self._call(f"read {n} bytes from 0x{reg:02x}", "read_i2c_block_data", reg, n))

    def write_bytes(self, reg: int, data: Sequence[int]) -> None:
        self._call(f"write {len(data)} bytes to 0x{reg:02x}", "write_i2c_block_data", reg, list(data))

    def read_u16_be(self, reg: int) -> int:
        """A 16-bit register sent MSB first (TI chips), read as one two-byte transaction."""
        hi, lo = self.read_bytes(reg, 2)
        return (hi << 8) | lo

    def write_u16_be(self, reg: int, value: int) -> None:
        self.write_bytes(reg, [(value >> 8) & 0xFF, value & 0xFF])


def probe(bus: Any, address: int) -> bool:
    """True if something acknowledges a one-byte read at `address` (i2cdetect -r)."""
    try:
        with getattr(bus, "lock", threading.RLock()):
            bus.read_byte(address)
        return True
    except OSError:
        return False


__all__ = ["RealI2CBus", "I2CDevice", "open_i2c", "real_i2c_bus", "probe"]
