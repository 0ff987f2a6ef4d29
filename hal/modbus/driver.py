"""The `modbus` driver: one Modbus device (a unit id on a bus) read as one slow sensor.

`poll()` returns one `Reading` per mapped register, channel `<sensor>.<register>`, unit from the map. The registers
due in a cycle are read in as few requests as `plan_reads` allows. Faults never raise:

* an exception response marks that request's values bad (the device answered, so it stays in service);
* a CRC error marks that request's values bad (the line is noisy, the device is alive);
* an answer that does not fit the request (short, long, garbled: `ProtocolError`) marks every value of that
  request bad, none is published as good;
* a timeout or a lost connection marks that request's and the cycle's remaining values bad and puts the device in
  exponential back-off (`backoff_min_s` doubling up to `backoff_max_s`): while backing off it is not asked at all,
  so a dead device costs the bus at most one timeout per back-off period and never more than one per cycle. When a
  back-off expires the next poll asks again; the first answer ends the back-off and the device is read in full.

Every fault is counted in `counters` and the last one kept in `last_error`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from hal.errors import BusError, ConfigurationError, CrcError, DeviceException, ProtocolError
from hal.modbus.registermap import (MAX_READ_REGISTERS, ReadRequest, Register, RegisterMap, load_profile,
                                    parse_registers, plan_reads)
from hal.options import Option, at_most, describe, in_range
from hal.types import Quality, Reading, now_ns


def _profile_check(v: Any) -> str | None:
    if not v:
        return None
    try:
        load_profile(v)
    except ConfigurationError as e:
        return f"expected a shipped profile name: {e}"
    return None


def _registers_check(v: Any) -> list[tuple[str, str]] | None:
    if not v:
        return None
    _, errors = parse_registers(v)
    return errors or None


class ModbusDevice:
    """One Modbus device: `profile = "sdm630"` or an inline `registers = [...]` list, on a modbus_tcp/rtu bus."""

    kind: ClassVar[str] = "slow"
    OPTIONS = [
        Option("unit", int, 1, "unit id (slave address) 1..247; 0..255 through a TCP gateway", in_range(0, 255)),
        Option("profile", str, "", "a shipped register map, e.g. sdm630 or eaton_mmax", check=_profile_check),
        Option("registers", list, [], "inline register map: a list of {name, table, address, type, ...}",
               check=_registers_check),
        Option("include", list, [], "read only these register names of the map (default: all)",
               check=lambda v: [(f"[{i}]", f"expected a register name (a string), got {describe(x)}")
                                for i, x in enumerate(v) if not isinstance(x, str)] or None),
        Option("byte_order", str, "big", "default byte order of the inline map", choices=("big", "little")),
        Option("word_order", str, "big", "default word order of the inline map", choices=("big", "little")),
        Option("max_gap", int, 0, "merge reads across up to this many unused registers (the device must answer "
               "reads of the gap)", in_range(0, MAX_READ_REGISTERS)),
        Option("max_registers", int, MAX_READ_REGISTERS, "registers per read at most (some devices accept fewer)",
               in_range(1, MAX_READ_REGISTERS)),
        Option("backoff_min_s", (int, float), 1.0, "first back-off after a device stops answering",
               at_most(86400)),
        Option("backoff_max_s", (int, float), 60.0, "longest back-off", at_most(86400)),
    ]

    @classmethod
    def validate(cls, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Cross-option checks, after each option passed its own."""
        if bool(values.get("profile")) == bool(values.get("registers")):
            return [("profile", "expected exactly one of profile = \"NAME\" or registers = [...]")]
        try:
            regmap = cls.register_map(values)
        except ConfigurationError as e:
            return [("profile", str(e))]
        names = {r.name for r in regmap}
        errors = [(f"include[{i}]", f"expected a register name of the map ({', '.join(sorted(names))}), got {n!r}")
                  for i, n in enumerate(values.get("include") or []) if n not in names]
        if values.get("backoff_min_s", 1) > values.get("backoff_max_s", 60):
            errors.append(("backoff_min_s", "expected a value not above backoff_max_s"))
        return errors

    @staticmethod
    def register_map(options: Mapping[str, Any]) -> RegisterMap:
        if options.get("profile"):
            regmap = load_profile(options["profile"])
        else:
            regs, errors = parse_registers(options.get("registers"), byte_order=options.get("byte_order", "big"),
                                           word_order=options.get("word_order", "big"))
            if errors:
                raise ConfigurationError("; ".join(f"registers{k}: {m}" for k, m in errors))
            regmap = RegisterMap(tuple(regs))
        include = options.get("include") or []
        if include:
            regmap = RegisterMap(tuple(r for r in regmap if r.name in include), regmap.name, regmap.source)
        return regmap

    def __init__(self, name: str, options: Mapping[str, Any], context: Any, bus: str | None = None) -> None:
        from hal.modbus.client import modbus_bus

        self.name = name
        self.unit = int(options.get("unit", 1))
        self.map = self.register_map(options)
        self.max_gap = int(options.get("max_gap", 0))
        self.max_registers = int(options.get("max_registers", MAX_READ_REGISTERS))
        self.backoff_min_s = float(options.get("backoff_min_s", 1.0))
        self.backoff_max_s = float(options.get("backoff_max_s", 60.0))
        self.bus_name = bus
        self.bus = modbus_bus(context, bus, name)
        if self.bus.type == "modbus_rtu" and not 1 <= self.unit <= 247:
            raise ConfigurationError(f"{name}.unit: expected a unit id from 1 to 247 on an RTU line "
                                     f"(0 is broadcast), got {self.unit}")
        if self.bus.emulator is not None:
            self.bus.emulator.add_device(self.unit, self.map)
        self.counters = {"polls": 0, "requests": 0, "good": 0, "bad": 0, "timeouts": 0, "exceptions": 0,
                         "crc_errors": 0, "protocol_errors": 0, "bus_errors": 0, "skipped": 0, "backoffs": 0,
                         "recoveries": 0}
        self.last_error: str | None = None
        self.failures = 0  # consecutive cycles without an answer
        self._retry_at = 0.0
        self._last_ok: dict[str, float] = {}
        self._plans: dict[frozenset[str], list[ReadRequest]] = {}
        self._clock = time.monotonic
        self._time_ns = now_ns
        if self.bus.emulator is not None and getattr(self.bus.emulator.plant, "clock", None) is not None:
            self._clock = self.bus.emulator.plant.clock.monotonic  # emulated: back-off and stamps on plant time
            self._time_ns = self.bus.emulator.plant.clock.time_ns

    # -- life cycle ---------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Nothing to open per device: the bus connects on first use (a device that is off at start-up is a fault
        handled by poll, not a reason to refuse to start)."""

    def close(self) -> None:
        pass  # the shared bus is closed by HalContext.close()

    @property
    def backing_off(self) -> bool:
        return self._clock() < self._retry_at

    # -- reading ------------------------------------------------------------------------------------------------
    def _channel(self, reg: Register) -> str:
        return f"{self.name}.{reg.name}"

    def channels(self) -> list[tuple[str, str]]:
        return [(self._channel(r), r.unit) for r in self.map]

    def channel_types(self) -> dict[str, type]:
        """The Python type of each channel's value, as `Register.decode` returns it."""
        def kind(r: Register) -> type:
            if r.type == "string":
                return str
            if r.type == "bit" or r.table in ("coil", "discrete_input"):
                return bool
            if r.type.startswith("f") or r.scale != 1.0 or r.offset != 0.0:
                return float
            return int
        return {self._channel(r): kind(r) for r in self.map}

    def _due(self, now: float) -> list[Register]:
        return [r for r in self.map if r.interval_s <= 0 or now - self._last_ok.get(r.name, -math.inf) >= r.interval_s]

    def plan(self, registers: list[Register]) -> list[ReadRequest]:
        key = frozenset(r.name for r in registers)
        if key not in self._plans:
            self._plans[key] = plan_reads(registers, max_gap=self.max_gap, max_registers=self.max_registers)
        return self._plans[key]

    def _bad(self, regs: tuple[Register, ...] | list[Register], error: str, ts: int) -> list[Reading]:
        self.counters["bad"] += len(regs)
        return [Reading.bad(self._channel(r), error, r.unit, ts) for r in regs]

    def poll(self) -> list[Reading]:
        self.counters["polls"] += 1
        now = self._clock()
        ts = self._time_ns()
        due = self._due(now)
        if not due:
            return []
        if now < self._retry_at:
            self.counters["skipped"] += 1
            why = (f"unit {self.unit} on bus {self.bus_name} not answering ({self.last_error}); "
                   f"next try in {self._retry_at - now:.1f} s")
            return self._bad(due, why, ts)
        readings: list[Reading] = []
        plan = self.plan(due)
        answered = False
        for i, req in enumerate(plan):
            self.counters["requests"] += 1
            try:
                values = self.bus.read(req.table, req.start, req.count, self.unit)
            except DeviceException as e:
                answered = True
                self.counters["exceptions"] += 1
                self.last_error = str(e)
                readings += self._bad(req.registers, str(e), ts)
                continue
            except (CrcError, ProtocolError) as e:  # an answer we cannot trust: the whole read is bad
                self.counters["crc_errors" if isinstance(e, CrcError) else "protocol_errors"] += 1
                self.last_error = str(e)
                readings += self._bad(req.registers, str(e), ts)
                continue
            except BusError as e:  # timeout, connection lost: the device (or the line) is not answering
                self.counters["timeouts" if isinstance(e, TimeoutError) else "bus_errors"] += 1
                self.last_error = str(e)
                readings += self._bad(req.registers, str(e), ts)
                rest = [r for q in plan[i + 1:] for r in q.registers]
                if rest:
                    readings += self._bad(rest, f"skipped: unit {self.unit} did not answer this cycle", ts)
                self._back_off(now)
                return readings
            answered = True
            for reg in req.registers:
                readings.append(self._decode(reg, req, values, ts, now))
        if answered:
            if self.failures:
                self.counters["recoveries"] += 1
            self.failures = 0
            self._retry_at = 0.0
        return readings

    def _decode(self, reg: Register, req: ReadRequest, values: list[Any], ts: int, now: float) -> Reading:
        try:
            value = reg.decode(req.values_of(reg, values))
        except Exception as e:  # a short answer, a struct error: a bad value, never a dead thread
            self.counters["bad"] += 1
            return Reading.bad(self._channel(reg), f"cannot decode {reg.type} at {reg.address}: {e}", reg.unit, ts)
        if isinstance(value, float) and not math.isfinite(value):
            self.counters["bad"] += 1
            return Reading(self._channel(reg), ts, None, reg.unit, Quality.BAD, f"device reported {value}")
        self.counters["good"] += 1
        self._last_ok[reg.name] = now
        return Reading(self._channel(reg), ts, value, reg.unit, Quality.GOOD)

    def _back_off(self, now: float) -> None:
        self.failures += 1
        self.counters["backoffs"] += 1
        delay = min(self.backoff_min_s * 2 ** (self.failures - 1), self.backoff_max_s)
        self._retry_at = now + delay

    # -- writing ------------------------------------------------------------------------------------------------
    def write(self, register: str | None, value: Any) -> Any:
        """Write a register marked `writable` (a holding register: FC06, or FC16 for multi-register types; a coil:
        FC05) by name, within its `min`/`max`, encoded with the map's type, order and scale; then read it back and
        return the engineering value the device now holds. Raises PermissionError (not writable), ValueError (out of
        range or the wrong type), hal.errors (bus faults)."""
        if not register:
            writable = [r.name for r in self.map.registers if r.writable]
            raise ValueError(f"{self.name}: name the register to write (writable: {', '.join(writable) or 'none'})")
        try:
            reg = self.map.by_name(register)
        except (KeyError, ConfigurationError):
            raise ValueError(f"{self.name} has no register {register!r}") from None
        if not reg.writable:
            raise PermissionError(f"{self.name}.{register} is not writable (mark it writable = true in the map)")
        if reg.table == "coil" or reg.type == "bit":
            if not isinstance(value, bool) and value not in (0, 1):
                raise ValueError(f"{self.name}.{register}: expected true or false, got {value!r}")
            value = bool(value)
        elif reg.type == "string":
            if not isinstance(value, str):
                raise ValueError(f"{self.name}.{register}: expected a string, got {value!r}")
            if not value.isascii() or "\0" in value or len(value) > 2 * reg.length:
                raise ValueError(f"{self.name}.{register}: expected ASCII text of at most {2 * reg.length} "
                                 f"characters without NUL, got {value[:80]!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{self.name}.{register}: expected a number, got {value!r}")
            if not reg.min <= value <= reg.max:
                bounds = (f"from {reg.min:g} to {reg.max:g}" if math.isfinite(reg.min) and math.isfinite(reg.max)
                          else f"at least {reg.min:g}" if math.isfinite(reg.min) else f"at most {reg.max:g}")
                raise ValueError(f"{self.name}.{register}: expected a value {bounds}, got {value!r}")
            problem = reg.encode_problem(value)
            if problem:  # refused before any write, never clamped
                raise ValueError(f"{self.name}.{register}: expected a value the register can hold: {problem}")
        self._write(reg, value)
        self.counters["writes"] = self.counters.get("writes", 0) + 1
        return reg.decode(self.bus.read(reg.table, reg.address, reg.count, self.unit)[: reg.count])

    def _write(self, reg: Any, value: Any) -> None:
        register = reg.name
        if reg.table == "coil":
            self.bus.write_coil(reg.address, bool(value), self.unit)
        elif reg.table == "holding" and reg.count == 1 and reg.type != "bit":
            self.bus.write_register(reg.address, int(reg.encode(value)[0]), self.unit)
        elif reg.table == "holding" and reg.type != "bit":
            self.bus.write_registers(reg.address, [int(w) for w in reg.encode(value)], self.unit)
        else:
            raise ConfigurationError(f"{self.name}.{register}: only holding registers and coils are writable")


__all__ = ["ModbusDevice"]
