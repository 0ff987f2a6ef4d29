"""One Modbus client per bus, shared by every device (unit id) on it; pymodbus stays behind this wrapper.

`ModbusBus.read(table, start, count, unit)` returns exactly `count` words or bits, or raises a typed `hal.errors`
exception: `DeviceException` (an exception response, with its code), `BusTimeout` (no answer), `CrcError` (an
answer with a bad checksum, RTU only), `ProtocolError` (an answer that does not fit the request: short, long,
garbled; the connection is dropped) or `BusError` (cannot connect / port gone). Requests on one bus are
serialised by a lock, so devices read from different threads never interleave on the wire. Defaults are sized for
the field (timeout 0.5 s RTU / 1 s TCP, no immediate retries) rather than pymodbus's 3 s x 3 retries.

For an emulated bus the client talks to the `hal.emulated.modbus.EmulatedModbusServer` of that bus (a pymodbus
server on 127.0.0.1 or at the far end of a pty pair), started on first use.
"""

from __future__ import annotations

import logging
import threading
from struct import error as struct_error
from collections.abc import Mapping
from typing import Any

from hal.errors import BusError, BusTimeout, ConfigurationError, CrcError, DeviceException, ProtocolError

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # failures are counted and reported as readings instead

_READ_FC = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}


def crc16(data: bytes) -> bytes:
    """Modbus RTU CRC-16 (polynomial 0xA001 reflected, init 0xFFFF), low byte first as sent on the wire."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return bytes((crc & 0xFF, crc >> 8))


class ModbusBus:
    """A Modbus TCP or RTU line. `endpoint` is (host, port) for TCP or a serial device path for RTU."""

    def __init__(self, name: str, bus_type: str, options: Mapping[str, Any], emulator: Any = None) -> None:
        if bus_type not in ("modbus_tcp", "modbus_rtu"):
            raise ConfigurationError(f"bus {name}: expected type modbus_tcp or modbus_rtu, got {bus_type!r}")
        self.name = name
        self.type = bus_type
        self.options = dict(options)
        self.timeout_s = float(self.options.get("timeout_s", 1.0 if bus_type == "modbus_tcp" else 0.5))
        self.retries = int(self.options.get("retries", 0))
        self.emulator = emulator
        self._client: Any = None
        self._endpoint: Any = None
        self._lock = threading.Lock()
        self._rx = b""
        self.counters = {"requests": 0, "responses": 0, "timeouts": 0, "exceptions": 0, "crc_errors": 0,
                         "connect_errors": 0, "protocol_errors": 0}

    # -- connection ---------------------------------------------------------------------------------------------
    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx = bytes(data)
        return data

    def _current_endpoint(self) -> Any:
        if self.emulator is not None:
            self.emulator.ensure_running()
            return (self.emulator.endpoint, self.emulator.generation)  # a restarted server needs a new connection
        if self.type == "modbus_tcp":
            return (self.options.get("host") or "127.0.0.1", int(self.options.get("port", 502)))
        return self.options.get("port")

    def _connect(self) -> Any:
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient
        from pymodbus.framer import FramerType

        endpoint = self._current_endpoint()
        if self._client is not None and endpoint != self._endpoint:
            self._close_client()
        if self._client is None:
            target = endpoint[0] if self.emulator is not None else endpoint
            if self.type == "modbus_tcp":
                host, port = target
                self._client = ModbusTcpClient(host, port=port, timeout=self.timeout_s, retries=self.retries,
                                               reconnect_delay=0, trace_packet=self._trace_packet)
            else:
                o = self.options
                self._client = ModbusSerialClient(
                    target, framer=FramerType.RTU, baudrate=int(o.get("baudrate", 9600)),
                    bytesize=int(o.get("bytesize", 8)), parity=str(o.get("parity", "N")),
                    stopbits=int(o.get("stopbits", 1)), timeout=self.timeout_s, retries=self.retries,
                    reconnect_delay=0, trace_packet=self._trace_packet)
            self._endpoint = endpoint
        if not self._client.connected:
            if not self._client.connect():
                self.counters["connect_errors"] += 1
                target = endpoint[0] if self.emulator is not None else endpoint
                where = f"{target[0]}:{target[1]}" if self.type == "modbus_tcp" else target
                raise BusError(f"Modbus bus {self.name}: cannot connect to {where}")
        return self._client

    def _close_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
        self._client = None

    def close(self) -> None:
        with self._lock:
            self._close_client()

    # -- requests -----------------------------------------------------------------------------------------------
    def read(self, table: str, start: int, count: int, unit: int) -> list[int] | list[bool]:
        """Read `count` registers (or bits) of `table` from `start` on unit id `unit`."""
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        fc = _READ_FC[table]
        where = f"Modbus bus {self.name} unit {unit}: read {table} {start}+{count} (FC{fc:02d})"
        with self._lock:
            client = self._connect()
            self.counters["requests"] += 1
            self._rx = b""
            call = {1: client.read_coils, 2: client.read_discrete_inputs, 3: client.read_holding_registers,
                    4: client.read_input_registers}[fc]
            try:
                response = call(start, count=count, device_id=unit)
            except ModbusIOException:
                rx = self._rx
                if self.type == "modbus_rtu" and len(rx) >= 4 and crc16(rx[:-2]) != rx[-2:]:
                    self.counters["crc_errors"] += 1
                    raise CrcError(f"{where}: CRC error in the answer ({rx.hex(' ')})") from None
                self.counters["timeouts"] += 1
                if self.type == "modbus_tcp":  # a late answer would be taken for the next request's: reconnect
                    self._close_client()
                raise BusTimeout(f"{where}: no answer within {self.timeout_s:g} s") from None
            except ConnectionException as e:
                self.counters["connect_errors"] += 1
                self._close_client()
                raise BusError(f"{where}: connection lost ({e})") from None
            except OSError as e:
                self.counters["connect_errors"] += 1
                self._close_client()
                raise BusError(f"{where}: {e}") from None
            except (ModbusException, ValueError, struct_error, IndexError) as e:  # a garbled or unexpected answer
                self._protocol_error(f"{where}: protocol error: {e}")
            if response.isError():
                code = int(getattr(response, "exception_code", 0) or 0)
                self.counters["exceptions"] += 1
                name = DeviceException.NAMES.get(code, "unknown exception")
                raise DeviceException(f"{where}: exception {code} ({name})", code)
            # an answer of the wrong length is a protocol error for the whole read: its values are not trusted,
            # and never become "list index out of range" further up
            if table in ("coil", "discrete_input"):
                bits = list(getattr(response, "bits", None) or [])
                if len(bits) < count or len(bits) >= count + 8:  # bits come in whole bytes: ceil(count / 8) of them
                    self._protocol_error(f"{where}: protocol error: expected {count} bits "
                                         f"({(count + 7) // 8} bytes), got {len(bits)} bits")
                self.counters["responses"] += 1
                return bits[:count]
            registers = list(getattr(response, "registers", None) or [])
            if len(registers) != count:
                self._protocol_error(f"{where}: protocol error: expected {count} registers, got {len(registers)}")
            self.counters["responses"] += 1
            return registers

    def _protocol_error(self, message: str) -> None:
        """Count, drop the connection (what follows on it cannot be trusted) and raise ProtocolError. Lock held."""
        self.counters["protocol_errors"] += 1
        self._close_client()
        raise ProtocolError(message)

    def write_register(self, address: int, value: int, unit: int) -> None:
        """Write one holding register (FC06); raises like `read`."""
        self._write("register", address, value, unit)

    def write_registers(self, address: int, values: list[int], unit: int) -> None:
        """Write consecutive holding registers (FC16), e.g. a u32 or f32 setpoint; raises like `read`."""
        self._write("registers", address, list(values), unit)

    def write_coil(self, address: int, value: bool, unit: int) -> None:
        """Write one coil (FC05); raises like `read`."""
        self._write("coil", address, value, unit)

    def _write(self, what: str, address: int, value: Any, unit: int) -> None:
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        where = f"Modbus bus {self.name} unit {unit}: write {what} {address}"
        with self._lock:
            client = self._connect()
            self.counters["requests"] += 1
            try:
                fn = {"register": client.write_register, "registers": client.write_registers,
                      "coil": client.write_coil}[what]
                response = fn(address, value, device_id=unit)
            except ModbusIOException:
                self.counters["timeouts"] += 1
                if self.type == "modbus_tcp":
                    self._close_client()
                raise BusTimeout(f"{where}: no answer within {self.timeout_s:g} s") from None
            except ConnectionException as e:
                self.counters["connect_errors"] += 1
                self._close_client()
                raise BusError(f"{where}: connection lost ({e})") from None
            except OSError as e:
                self.counters["connect_errors"] += 1
                self._close_client()
                raise BusError(f"{where}: {e}") from None
            except (ModbusException, ValueError, struct_error, IndexError) as e:
                self._protocol_error(f"{where}: protocol error: {e}")
            if response.isError():
                code = int(getattr(response, "exception_code", 0) or 0)
                self.counters["exceptions"] += 1
                raise DeviceException(f"{where}: exception {code} ({DeviceException.NAMES.get(code, '?')})", code)
            self.counters["responses"] += 1


def modbus_bus(context: Any, bus: str | None, sensor: str = "modbus") -> ModbusBus:
    """The shared `ModbusBus` of a configured bus (emulated when the bus or the context says so)."""
    from hal.buses import bus_config

    bus_type, values, emulated = bus_config(context, bus, ("modbus_tcp", "modbus_rtu"), sensor)
    emulator = None
    if emulated:
        from hal.emulated.modbus import emulator_for
        emulator = emulator_for(context, bus, bus_type)
    return context.shared(f"modbus:{bus}", lambda: ModbusBus(bus, bus_type, values, emulator))


__all__ = ["ModbusBus", "modbus_bus", "crc16"]
