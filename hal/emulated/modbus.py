"""Emulated Modbus devices: a pymodbus server built from the same register maps the drivers read.

One `EmulatedModbusServer` per emulated Modbus bus (`emulator_for(context, bus, type)`): a `ModbusTcpServer` on
127.0.0.1 (a free port, kept across restarts) or a `ModbusSerialServer` (RTU) on the far end of a `PtyLink`. Each
`modbus` driver on the bus registers its unit id and register map (`add_device`); the server (re)starts on the next
request with every registered device. Register values are computed when read: a register's `signal` names a plant
signal (`Plant.signal`), else `emulate_value`; `set_value` pins a value, and client writes stick.

Faults, reachable from code (tests and scenarios): `go_silent(unit)` (a dead device), `fail_with(unit, code)`
(exception responses), `corrupt_crc(unit)` (RTU answers with a bad CRC), `clear_faults()`. Unknown unit ids get
no answer, as on an RS-485 line. `requests` counts the requests each unit received (coalescing tests).

Runs its own asyncio loop in a daemon thread (pymodbus servers must be built inside a running loop).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter
from typing import Any

from hal.modbus.registermap import BIT_TABLES, Register, RegisterMap

_FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete_input", 3: "holding", 6: "holding", 16: "holding",
             22: "holding", 23: "holding", 4: "input"}


class EmulatedModbusServer:
    def __init__(self, name: str, bus_type: str = "modbus_tcp", plant: Any = None, strict_gaps: bool = False) -> None:
        if bus_type not in ("modbus_tcp", "modbus_rtu"):
            raise ValueError(f"bus {name}: expected modbus_tcp or modbus_rtu, got {bus_type!r}")
        self.name = name
        self.type = bus_type
        self.plant = plant
        self.strict_gaps = strict_gaps  # True: unmapped addresses between mapped ones raise exception 2
        self.devices: dict[int, RegisterMap] = {}
        self.requests: Counter[int] = Counter()
        self.silent: set[int] = set()
        self.all_silent = False
        self.exceptions: dict[int, int] = {}
        self.crc_faults: dict[int, int] = {}  # unit -> remaining corrupted answers (-1: until cleared)
        self._pinned: dict[tuple[int, str, int], Any] = {}  # (unit, table, address) -> word/bit written or pinned
        self._values: dict[tuple[int, str], Any] = {}
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._running_units: tuple[int, ...] | None = None
        self._port = 0
        self.generation = 0  # bumped at every (re)start
        self.link: Any = None
        if bus_type == "modbus_rtu":
            from hal.emulated.serial import PtyLink
            self.link = PtyLink(f"modbus-{name}")
        self._t0 = time.monotonic()

    # -- configuration ------------------------------------------------------------------------------------------
    def add_device(self, unit: int, register_map: RegisterMap) -> None:
        with self._lock:
            if unit in self.devices:
                merged = {r.name: r for r in self.devices[unit]}
                merged.update({r.name: r for r in register_map})
                register_map = RegisterMap(tuple(merged.values()), register_map.name, register_map.source)
            self.devices[unit] = register_map

    def set_value(self, unit: int, name: str, value: Any) -> None:
        """Pin a register's engineering value (None un-pins it)."""
        with self._lock:
            if value is None:
                self._values.pop((unit, name), None)
            else:
                self._values[(unit, name)] = value

    # -- faults -------------------------------------------------------------------------------------------------
    def go_silent(self, unit: int | None = None) -> None:
        """Stop answering (one unit, or the whole bus when unit is None)."""
        with self._lock:
            if unit is None:
                self.all_silent = True
            else:
                self.silent.add(unit)

    def answer(self, unit: int | None = None) -> None:
        with self._lock:
            if unit is None:
                self.all_silent = False
                self.silent.clear()
            else:
                self.silent.discard(unit)

    def fail_with(self, unit: int, code: int | None) -> None:
        """Answer every request to `unit` with exception `code` (None: answer normally again)."""
        with self._lock:
            if code is None:
                self.exceptions.pop(unit, None)
            else:
                self.exceptions[unit] = int(code)

    def corrupt_crc(self, unit: int, count: int = -1) -> None:
        """Corrupt the CRC of the next `count` answers of `unit` (-1: until cleared). RTU only."""
        with self._lock:
            self.crc_faults[unit] = count

    def clear_faults(self) -> None:
        with self._lock:
            self.silent.clear()
            self.all_silent = False
            self.exceptions.clear()
            self.crc_faults.clear()

    # -- values -------------------------------------------------------------------------------------------------
    def _value(self, unit: int, reg: Register, t: float) -> Any:
        if (unit, reg.name) in self._values:
            return self._values[(unit, reg.name)]
        if reg.signal and self.plant is not None:
            try:
                v = self.plant.signal(reg.signal, t)
            except KeyError:
                return reg.emulate_value
            if reg.type == "bit" and reg.table not in BIT_TABLES:
                return bool((int(v) >> reg.bit) & 1)
            return v
        return reg.emulate_value

    async def _action(self, unit: int, fc: int, start: int, address: int, count: int, registers: list[int],
                      values: Any) -> Any:
        from pymodbus.constants import ExcCodes

        with self._lock:
            if unit in self.exceptions:
                return ExcCodes(self.exceptions[unit])
            table = _FC_TABLE.get(fc)
            regmap = self.devices.get(unit)
            if table is None or regmap is None:
                return None
            bits = table in BIT_TABLES
            if values is not None:  # a write: remember what the client wrote
                if not bits:
                    for i, v in enumerate(values):
                        self._pinned[(unit, table, address + i)] = int(v)
                else:
                    for i, v in enumerate(values):
                        self._pinned[(unit, table, address + i)] = bool(v)
                return None
            t = self.plant.now() if self.plant is not None else time.monotonic() - self._t0
            lo, hi = (address, address + (count * 16 if bits else count))
            if bits:
                lo, hi = (address // 16) * 16, (address // 16) * 16 + count * 16
            regs = [r for r in regmap if r.table == table and r.address < hi and r.end > lo]
            regs.sort(key=lambda r: r.type == "bit")  # whole words first, then bit fields into them
            for r in regs:
                enc = r.encode(self._value(unit, r, t), clamp=True)
                if bits:
                    i, b = divmod(r.address, 16)
                    j = i - start
                    if 0 <= j < len(registers):
                        registers[j] = (registers[j] & ~(1 << b)) | ((1 << b) if enc[0] else 0)
                    continue
                for k, w in enumerate(enc):
                    j = r.address + k - start
                    if not 0 <= j < len(registers):
                        continue
                    if r.type == "bit":
                        registers[j] = (registers[j] & ~(1 << r.bit)) | int(w)
                    else:
                        registers[j] = int(w)
            for (u, tb, a), v in self._pinned.items():
                if u == unit and tb == table and lo <= a < hi:
                    if bits:
                        i, b = divmod(a, 16)
                        j = i - start
                        if 0 <= j < len(registers):
                            registers[j] = (registers[j] & ~(1 << b)) | ((1 << b) if v else 0)
                    elif 0 <= a - start < len(registers):
                        registers[a - start] = v
            return None

    # -- pymodbus plumbing --------------------------------------------------------------------------------------
    def _simdevice(self, unit: int, regmap: RegisterMap) -> Any:
        from pymodbus.simulator import DataType, SimData, SimDevice

        blocks: list[list[Any]] = []
        for table in ("coil", "discrete_input", "holding", "input"):
            addrs = sorted({a for r in regmap if r.table == table for a in range(r.address, r.end)})
            if not addrs:
                if table in BIT_TABLES:
                    blocks.append([SimData(65520, values=[False] * 16, datatype=DataType.BITS)])
                else:
                    blocks.append([SimData(65534, datatype=DataType.INVALID)])
                continue
            if table in BIT_TABLES:
                lo = addrs[0] // 16 * 16
                n = (addrs[-1] // 16 * 16 + 16) - lo
                blocks.append([SimData(lo, values=[False] * n, datatype=DataType.BITS)])
                continue
            runs: list[list[int]] = []
            for a in addrs:
                if runs and (a == runs[-1][1] + 1 or (not self.strict_gaps)):
                    runs[-1][1] = a
                else:
                    runs.append([a, a])
            blocks.append([SimData(lo, count=hi - lo + 1, values=0, datatype=DataType.UINT16) for lo, hi in runs])
        return SimDevice(id=unit, simdata=tuple(blocks), action=functools.partial(self._action, unit))

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.requests[int(pdu.dev_id)] += 1
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        unit = data[0] if self.type == "modbus_rtu" else (data[6] if len(data) > 6 else -1)
        with self._lock:
            if self.all_silent or unit in self.silent or unit not in self.devices:
                return b""
            left = self.crc_faults.get(unit, 0)
            if left and self.type == "modbus_rtu":
                if left > 0:
                    self.crc_faults[unit] = left - 1
                return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _start_server(self) -> None:
        from pymodbus.framer import FramerType
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer

        devices = [self._simdevice(u, m) for u, m in sorted(self.devices.items())]
        if self.type == "modbus_tcp":
            server = ModbusTcpServer(devices, address=("127.0.0.1", self._port), trace_packet=self._trace_packet,
                                     trace_pdu=self._trace_pdu)
            await server.serve_forever(background=True)
            self._port = server.transport.sockets[0].getsockname()[1]
        else:
            server = ModbusSerialServer(devices, framer=FramerType.RTU, port=self.link.far_path, baudrate=115200,
                                        trace_packet=self._trace_packet, trace_pdu=self._trace_pdu)
            await server.serve_forever(background=True)
        self._server = server

    async def _stop_server(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def ensure_running(self) -> None:
        """Start the server, or restart it if devices were added since it started."""
        with self._lock:
            units = tuple(sorted(self.devices))
            if self._server is not None and units == self._running_units:
                return
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._run_loop, name=f"modbus-emulator-{self.name}",
                                                daemon=True)
                self._thread.start()
            if self._server is not None:
                asyncio.run_coroutine_threadsafe(self._stop_server(), self._loop).result(5)
            asyncio.run_coroutine_threadsafe(self._start_server(), self._loop).result(5)
            self._running_units = units
            self.generation += 1

    @property
    def endpoint(self) -> Any:
        """(host, port) for TCP, the client's pty path for RTU."""
        return ("127.0.0.1", self._port) if self.type == "modbus_tcp" else self.link.near_path

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._stop_server(), loop).result(5)
            except Exception:
                pass
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            loop.close()
        if self.link is not None:
            self.link.close()
            self.link = None


def emulator_for(context: Any, bus: str, bus_type: str) -> EmulatedModbusServer:
    """The emulated server of an emulated Modbus bus, shared through the context."""
    plant = context.get_plant()  # outside shared(): the context's lock is not re-entrant
    return context.shared(f"modbus-emulator:{bus}", lambda: EmulatedModbusServer(bus, bus_type, plant))


__all__ = ["EmulatedModbusServer", "emulator_for"]
