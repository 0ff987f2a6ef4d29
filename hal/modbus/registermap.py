"""Modbus register maps as data: what a device's registers mean, and how to read them in as few requests as possible.

A `Register` names one value: table (coil, discrete input, holding, input), 0-based protocol address, data type,
byte and word order, scale and offset, unit and an optional poll interval. A `RegisterMap` is a device's list of
registers (inline in the config or a shipped profile, `hal/profiles/*.toml`). `plan_reads` coalesces the registers
due in one cycle into the fewest requests the protocol allows (at most 125 registers or 2000 bits per read), bridging
gaps of up to `max_gap` unused registers.

Owns: decoding and encoding register words. Must not touch a bus (that is `hal.modbus.client`).
"""

from __future__ import annotations

import math
import struct
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from hal.errors import ConfigurationError
from hal.options import Option, REQUIRED, in_range, parse_options

TABLES = ("coil", "discrete_input", "holding", "input")
BIT_TABLES = ("coil", "discrete_input")
# data type -> (registers, struct code); string and bit are special
TYPES: dict[str, tuple[int, str]] = {
    "u16": (1, "H"), "i16": (1, "h"), "u32": (2, "I"), "i32": (2, "i"), "f32": (2, "f"),
    "u64": (4, "Q"), "i64": (4, "q"), "f64": (4, "d"), "string": (0, ""), "bit": (1, ""),
}
ORDERS = ("big", "little")
MAX_READ_REGISTERS = 125  # Modbus application protocol v1.1b3, 6.3/6.4: quantity of registers 1 to 125
MAX_READ_BITS = 2000  # ibid. 6.1/6.2: quantity of coils / inputs 1 to 2000


def _name_ok(v: Any) -> str | None:
    ok = v and all(c.isalnum() or c in "_-." for c in v)
    return None if ok else "expected a name of letters, digits, '_', '-' or '.'"


REGISTER_OPTIONS = [
    Option("name", str, REQUIRED, "the value's name; the channel is <sensor>.<name>", _name_ok),
    Option("table", str, "holding", "which table", choices=TABLES),
    Option("address", int, REQUIRED, "0-based protocol address (holding 40001 is address 0)", in_range(0, 65535)),
    Option("type", str, "u16", "data type", choices=tuple(TYPES)),
    Option("length", int, 0, "string length in registers (2 characters each)", in_range(0, 125)),
    Option("bit", int, -1, "for type bit in a holding/input register: the bit number 0..15", in_range(-1, 15)),
    Option("byte_order", str, "", "order of the two bytes in a register (default: the map's, else big)",
           choices=("", *ORDERS)),
    Option("word_order", str, "", "order of registers in a multi-register value (default: the map's, else big)",
           choices=("", *ORDERS)),
    Option("scale", (int, float), 1.0, "engineering value = raw * scale + offset"),
    Option("offset", (int, float), 0.0, "engineering value = raw * scale + offset"),
    Option("unit", str, "", "engineering unit, e.g. V, A, kWh"),
    Option("interval_s", (int, float), 0.0, "poll less often than the sensor's interval (0: every poll)",
           in_range(0, 86400)),
    Option("description", str, "", "what the value is (from the device manual)"),
    Option("writable", bool, False, "accept writes (the `set` command, Sparkplug DCMD): holding registers and coils"),
    Option("min", (int, float), -math.inf, "lowest value a write may set (engineering units)"),
    Option("max", (int, float), math.inf, "highest value a write may set (engineering units)"),
    Option("signal", str, "", "emulation only: the plant signal that drives this register"),
    Option("emulate_value", (int, float, str, bool), 0, "emulation only: a constant value when there is no signal"),
]


@dataclass(frozen=True)
class Register:
    name: str
    address: int
    table: str = "holding"
    type: str = "u16"
    length: int = 0
    bit: int = -1
    byte_order: str = "big"
    word_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    interval_s: float = 0.0
    description: str = ""
    signal: str = ""
    emulate_value: Any = 0
    writable: bool = False
    min: float = -math.inf
    max: float = math.inf

    @property
    def count(self) -> int:
        """Registers (or bits, for coils and discrete inputs) this value occupies."""
        if self.table in BIT_TABLES:
            return 1
        if self.type == "string":
            return self.length
        return TYPES[self.type][0]

    @property
    def end(self) -> int:
        return self.address + self.count

    def _bytes(self, words: Sequence[int]) -> bytes:
        ws = list(words) if self.word_order == "big" else list(reversed(words))
        bo = ">" if self.byte_order == "big" else "<"
        return b"".join(struct.pack(bo + "H", w & 0xFFFF) for w in ws)

    def _words(self, data: bytes) -> list[int]:
        bo = ">" if self.byte_order == "big" else "<"
        ws = [struct.unpack(bo + "H", data[i:i + 2])[0] for i in range(0, len(data), 2)]
        return ws if self.word_order == "big" else list(reversed(ws))

    def decode_raw(self, values: Sequence[int] | Sequence[bool]) -> int | float | bool | str:
        """Raw value (before scale/offset) from this register's words (or one bit)."""
        if self.table in BIT_TABLES:
            return bool(values[0])
        if self.type == "bit":
            return bool((values[0] >> self.bit) & 1)
        data = self._bytes(values)
        if self.type == "string":
            return data.split(b"\0", 1)[0].decode("ascii", errors="replace").rstrip()
        value = struct.unpack(">" + TYPES[self.type][1], data)[0]
        if self.type == "f32" and math.isfinite(value):
            value = float(f"{value:.7g}")  # a float32 carries ~7 significant digits; drop the binary noise
        return value

    def decode(self, values: Sequence[int] | Sequence[bool]) -> int | float | bool | str:
        """Engineering value: raw * scale + offset (booleans and strings unscaled; integers stay integers when
        scale is 1 and offset 0)."""
        raw = self.decode_raw(values)
        if isinstance(raw, (bool, str)):
            return raw
        if self.scale == 1.0 and self.offset == 0.0:
            return raw
        return raw * self.scale + self.offset

    def raw_range(self) -> tuple[float, float] | None:
        """Lowest and highest raw value of an integer type (None for floats, strings and bits)."""
        if self.table in BIT_TABLES or self.type in ("bit", "string"):
            return None
        code = TYPES[self.type][1]
        if code in "fd":
            return None
        bits = 8 * struct.calcsize(code)
        return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if code.islower() else (0, (1 << bits) - 1)

    def encode_problem(self, value: Any) -> str | None:
        """Why `value` (engineering units) cannot be encoded exactly into this register's type, or None."""
        rng = self.raw_range()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None if rng is None and self.type in ("bit", "string") else (
                None if isinstance(value, bool) else f"{value!r} is not a finite number")
        raw = (float(value) - self.offset) / self.scale
        if rng is not None and not rng[0] <= round(raw) <= rng[1]:
            return (f"{value:g} is raw {raw:g}, outside {self.type}'s {rng[0]}..{rng[1]}"
                    + (f" (scale {self.scale:g}, offset {self.offset:g})" if self.scale != 1 or self.offset else ""))
        if self.type == "f32" and abs(raw) > 3.4028234663852886e38:
            return f"{value:g} does not fit a float32"
        return None

    def encode(self, value: Any, *, clamp: bool = False) -> list[int] | list[bool]:
        """Words (or one bit) for an engineering value: the inverse of `decode` (used by the emulator and writes).
        A value the type cannot hold raises ValueError: a write is never clamped (a clamped setpoint is a wrong
        setpoint); only the emulator, playing a plant signal, asks for `clamp=True`."""
        if self.table in BIT_TABLES:
            return [bool(value)]
        if self.type == "bit":
            return [(1 << self.bit) if value else 0]
        if self.type == "string":
            data = str(value).encode("ascii", errors="replace")[: 2 * self.length].ljust(2 * self.length, b"\0")
            return self._words(data)
        raw: Any = value
        if not isinstance(value, bool) and (self.scale != 1.0 or self.offset != 0.0):
            raw = (float(value) - self.offset) / self.scale
        code = TYPES[self.type][1]
        if code in "fd":
            raw = float(raw)
        else:
            raw = int(round(float(raw)))
            bits = 8 * struct.calcsize(code)
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if code.islower() else (0, (1 << bits) - 1)
            if clamp:
                raw = min(max(raw, lo), hi)
            elif not lo <= raw <= hi:
                raise ValueError(f"{self.name}: {value!r} is raw {raw}, outside {self.type}'s range {lo}..{hi}")
        return self._words(struct.pack(">" + code, raw))


@dataclass(frozen=True)
class RegisterMap:
    """A device's registers. `source` says where the map came from (profile file and the manual it cites)."""

    registers: tuple[Register, ...]
    name: str = "inline"
    source: str = ""

    def __iter__(self):
        return iter(self.registers)

    def __len__(self) -> int:
        return len(self.registers)

    def by_name(self, name: str) -> Register:
        for r in self.registers:
            if r.name == name:
                return r
        raise KeyError(name)


def parse_registers(items: Any, *, byte_order: str = "big", word_order: str = "big"
                    ) -> tuple[list[Register], list[tuple[str, str]]]:
    """Parse a list of register tables. Returns (registers, [(key suffix like "[2].type", message)])."""
    errors: list[tuple[str, str]] = []
    regs: list[Register] = []
    if not isinstance(items, list) or not items:
        return [], [("", "expected a non-empty list of register tables")]
    names: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append((f"[{i}]", "expected a table with name, address, type ..."))
            continue
        v, errs = parse_options(REGISTER_OPTIONS, item)
        errors.extend((f"[{i}].{k}", m) for k, m in errs)
        if errs:
            continue
        if v["type"] == "string" and v["length"] < 1:
            errors.append((f"[{i}].length", "expected the string's length in registers (1 to 125) for type string"))
            continue
        if v["type"] == "bit" and v["table"] in ("holding", "input") and v["bit"] < 0:
            errors.append((f"[{i}].bit", "expected the bit number 0..15 for type bit in a register"))
            continue
        if v["table"] in BIT_TABLES and v["type"] not in ("bit", "u16"):
            errors.append((f"[{i}].type", f"expected bit for a {v['table']}, got {v['type']!r}"))
            continue
        if v["scale"] == 0:
            errors.append((f"[{i}].scale", "expected a non-zero scale"))
            continue
        if v["writable"] and v["table"] not in ("holding", "coil"):
            table_words = v["table"].replace("_", " ")
            errors.append((f"[{i}].writable", f"expected false: {table_words} registers cannot be written"))
            continue
        numeric = v["table"] == "holding" and v["type"] not in ("bit", "string")
        if v["writable"] and numeric and ("min" not in item or "max" not in item):
            missing = "min" if "min" not in item else "max"
            errors.append((f"[{i}].{missing}", "missing: expected min and max (engineering units) for a writable "
                                               "register: a write outside them is refused"))
            continue
        if v["min"] > v["max"]:
            errors.append((f"[{i}].min", f"expected min <= max, got {v['min']} > {v['max']}"))
            continue
        if v["name"] in names:
            errors.append((f"[{i}].name",
                           f"expected a unique name, {v['name']!r} is also registers[{names[v['name']]}]"))
            continue
        names[v["name"]] = i
        reg = Register(
            name=v["name"], address=v["address"], table=v["table"],
            type="bit" if v["table"] in BIT_TABLES else v["type"], length=v["length"], bit=v["bit"],
            byte_order=v["byte_order"] or byte_order, word_order=v["word_order"] or word_order,
            scale=float(v["scale"]), offset=float(v["offset"]), unit=v["unit"], interval_s=float(v["interval_s"]),
            description=v["description"], signal=v["signal"], emulate_value=v["emulate_value"],
            writable=bool(v["writable"]), min=float(v["min"]), max=float(v["max"]))
        if reg.writable and numeric:
            problem = next((f"[{i}].{k}: {m}" for k in ("min", "max") for m in [reg.encode_problem(v[k])] if m), None)
            if problem:
                key, message = problem.split(": ", 1)
                errors.append((key, f"expected a limit the register can hold: {message}"))
                continue
        if reg.end > 65536:
            errors.append((f"[{i}].address", f"expected the value to end at or below address 65535, "
                                             f"it ends at {reg.end - 1}"))
            continue
        regs.append(reg)
    return regs, errors


PROFILE_OPTIONS = [
    Option("name", str, REQUIRED, "device name"),
    Option("manufacturer", str, ""),
    Option("source", str, REQUIRED, "where the map is published (manual, document number, URL)"),
    Option("byte_order", str, "big", choices=ORDERS),
    Option("word_order", str, "big", choices=ORDERS),
    Option("notes", str, ""),
]


def available_profiles() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("hal.profiles").iterdir() if p.name.endswith(".toml"))


def load_profile(name: str) -> RegisterMap:
    """Load a shipped profile (`hal/profiles/NAME.toml`). Raises ConfigurationError naming the profile and key."""
    known = available_profiles()
    if name not in known:
        raise ConfigurationError(f"unknown Modbus profile {name!r} (known: {', '.join(known) or 'none'})")
    text = resources.files("hal.profiles").joinpath(f"{name}.toml").read_text("utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"profile {name}: not valid TOML: {e}") from None
    dev, errs = parse_options(PROFILE_OPTIONS, raw.get("device", {}))
    problems = [f"profile {name}: device.{k}: {m}" for k, m in errs]
    regs, rerrs = parse_registers(raw.get("registers"), byte_order=dev.get("byte_order", "big"),
                                  word_order=dev.get("word_order", "big"))
    problems += [f"profile {name}: registers{k}: {m}" for k, m in rerrs]
    if problems:
        raise ConfigurationError("; ".join(problems))
    return RegisterMap(tuple(regs), dev["name"], dev["source"])


@dataclass(frozen=True)
class ReadRequest:
    """One read: `count` registers (or bits) of `table` from `start`, covering `registers`."""

    table: str
    start: int
    count: int
    registers: tuple[Register, ...] = field(default=())

    def values_of(self, reg: Register, values: Sequence[Any]) -> Sequence[Any]:
        i = reg.address - self.start
        return values[i:i + reg.count]


def plan_reads(registers: Iterable[Register], *, max_gap: int = 0, max_registers: int = MAX_READ_REGISTERS,
               max_bits: int = MAX_READ_BITS) -> list[ReadRequest]:
    """Coalesce registers into the fewest reads: per table, sorted by address, a register joins the current read if
    it starts at most `max_gap` unused registers after the read's end and the read stays within the protocol's
    limit. Overlapping registers (a bit field and its word) share a read."""
    plan: list[ReadRequest] = []
    by_table: dict[str, list[Register]] = {}
    for r in registers:
        by_table.setdefault(r.table, []).append(r)
    for table in TABLES:
        regs = sorted(by_table.get(table, []), key=lambda r: (r.address, r.count))
        limit = max_bits if table in BIT_TABLES else max_registers
        cur: list[Register] = []
        start = end = 0
        for r in regs:
            if cur and r.address - end <= max_gap and max(end, r.end) - start <= limit:
                cur.append(r)
                end = max(end, r.end)
                continue
            if cur:
                plan.append(ReadRequest(table, start, end - start, tuple(cur)))
            cur, start, end = [r], r.address, r.end
        if cur:
            plan.append(ReadRequest(table, start, end - start, tuple(cur)))
    return plan


def finite(value: Any) -> bool:
    return not (isinstance(value, float) and (math.isnan(value) or math.isinf(value)))


__all__ = ["Register", "RegisterMap", "ReadRequest", "parse_registers", "load_profile", "available_profiles",
           "plan_reads", "REGISTER_OPTIONS", "TABLES", "TYPES", "MAX_READ_REGISTERS", "MAX_READ_BITS"]
