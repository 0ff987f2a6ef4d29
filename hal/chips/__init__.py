"""Chip declarations: each I2C chip's data sheet, typed in once - registers, fields, valid ranges, identity and
timing - for the driver (`hal.drivers.*`), the emulated chip (`hal.emulated.chips`) and `scan i2c` to share.

Owns: the `Register`, `Field` and `Chip` descriptions and the I2C wire-time arithmetic (`i2c_read_bits`,
`i2c_read_s`). Must not touch: buses, threads, configuration, emulation. A chip module (`hal.chips.adxl345`, ...)
holds numbers copied from its data sheet with the table or section they come from, and small pure functions that
are the data sheet's own equations; nothing here knows how the numbers are used.

A `Field` is a run of bits of one register (Adafruit's RWBits, without the transport): `get(reg_value)` extracts
it, `put(reg_value, v)` refuses a value that does not fit instead of masking it away.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Register:
    """One register: address, width in bits (8 or 16), power-on reset value, access (`r`, `rw`, `w`)."""

    name: str
    address: int
    reset: int | None = None  # None: undefined or measurement-dependent at power-on
    width: int = 8
    access: str = "rw"
    doc: str = ""

    @property
    def readonly(self) -> bool:
        return self.access == "r"


@dataclass(frozen=True)
class Field:
    """`width` bits of register `reg` from bit `shift` (LSB = bit 0)."""

    reg: Register
    shift: int
    width: int = 1
    doc: str = ""

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.shift

    def get(self, value: int) -> int:
        return (value & self.mask) >> self.shift

    def put(self, value: int, v: int) -> int:
        """`value` with this field set to `v`; ValueError if `v` does not fit (never masked silently)."""
        if not 0 <= v < (1 << self.width):
            raise ValueError(f"{self.reg.name}[{self.shift + self.width - 1}:{self.shift}]: expected 0..."
                             f"{(1 << self.width) - 1}, got {v}")
        return (value & ~self.mask) | (v << self.shift)


@dataclass(frozen=True)
class Chip:
    """What `scan` and the emulator need to know about a chip without its driver."""

    name: str  # also the driver and emulated model name
    part: str  # "Analog Devices ADXL345"
    source: str  # data sheet and revision
    addresses: tuple[int, ...]
    registers: Mapping[str, Register]
    # identify: (register, expected value) - an ID register, or for chips without one the power-on value of a
    # configuration register (then `id_is_reset` is True and a match is only a hint)
    id_register: str = ""
    id_value: int = 0
    id_is_reset: bool = False
    others: Mapping[int, str] = field(default_factory=dict)  # other parts answering the same ID register
    byte_order: str = "big"  # of 16-bit registers on the wire

    def reg(self, name: str) -> Register:
        return self.registers[name]

    def identify(self, read: Callable[[Register], int]) -> str:
        """A short label if the chip at hand looks like this one (`read` returns a register's value), else ''."""
        if not self.id_register:
            return ""
        r = self.registers[self.id_register]
        got = read(r)
        if got == self.id_value:
            label = self.part.split()[-1]
            return f"{label}? (power-on {r.name} 0x{got:0{r.width // 4}x}, no ID register)" if self.id_is_reset \
                else label
        return self.others.get(got, "")

    def reset_values(self) -> dict[int, int]:
        """address -> power-on value of every register whose reset value the data sheet gives."""
        return {r.address: r.reset for r in self.registers.values() if r.reset is not None}


def registers(*regs: Register) -> dict[str, Register]:
    return {r.name: r for r in regs}


# -- I2C wire time (NXP UM10204, I2C-bus specification: 9 clocks per byte with its ACK) ------------------------------

def i2c_read_bits(nbytes: int) -> int:
    """SCL clocks of a register read as smbus2 does it (write register pointer, repeated START, read `nbytes`):
    START + address/W + register + repeated START + address/R + nbytes, 9 clocks per byte with its ACK, + STOP."""
    return 1 + 9 + 9 + 1 + 9 + 9 * nbytes + 1


def i2c_write_bits(nbytes: int) -> int:
    """SCL clocks of a register write: START + address/W + register + nbytes, 9 clocks each, + STOP."""
    return 1 + 9 + 9 + 9 * nbytes + 1


def i2c_read_s(nbytes: int, baudrate: int) -> float:
    """Seconds on the wire for one register read of `nbytes` at SCL `baudrate` Hz (no clock stretching, no gaps
    between bytes: a lower bound; a Linux host adds per-transaction latency on top)."""
    return i2c_read_bits(nbytes) / float(baudrate)


I2C_STANDARD_HZ, I2C_FAST_HZ = 100_000, 400_000  # UM10204 Standard-mode and Fast-mode


def chips() -> dict[str, Chip]:
    """Every declared chip by name (imported lazily, so importing hal.chips stays cheap)."""
    from hal.chips import ads1115, adxl345, bme280, ina219
    return {m.CHIP.name: m.CHIP for m in (adxl345, bme280, ads1115, ina219)}


__all__ = ["Register", "Field", "Chip", "registers", "i2c_read_bits", "i2c_write_bits", "i2c_read_s", "chips",
           "I2C_STANDARD_HZ", "I2C_FAST_HZ"]

