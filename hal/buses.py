"""Bus descriptions: the options of each `[buses.NAME]` type, validated like driver options, and the one place that
decides whether a bus is real or emulated.

The opened bus objects live in `HalContext.shared` under `"<kind>:<bus name>"`, so every driver on a bus shares one
SMBus handle, one gpiozero pin factory, one serial port or one Modbus client. Openers live beside their bus:
`hal.i2c.open_i2c`, `hal.gpio.pin_factory`, `hal.serialbus.open_serial`, `hal.modbus.client.modbus_bus`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hal.errors import ConfigurationError
from hal.options import Option, at_most, in_range, parse_options

GENERIC_KEYS = ("type", "backend")
PARITIES = ("N", "E", "O")

BUS_OPTIONS: dict[str, list[Option]] = {
    "gpio": [
        Option("pin_factory", str, "", "gpiozero pin factory for the real backend (default: gpiozero's own choice, "
               "lgpio on current Pi OS)", choices=("", "lgpio", "rpigpio", "pigpio", "native")),
    ],
    "i2c": [
        Option("bus", int, 1, "the Linux I2C adapter number, /dev/i2c-N (1 on a Raspberry Pi header)",
               in_range(0, 255)),
        Option("baudrate", int, 100_000, "SCL clock in Hz the adapter runs at (the driver checks its sample rates "
               "against it; it does not set it): 100000 is the Raspberry Pi default, 400000 (Fast-mode) needs "
               "dtparam=i2c_arm_baudrate=400000 in /boot/firmware/config.txt", in_range(10_000, 3_400_000)),
    ],
    "serial": [
        Option("port", str, "", "serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/..."),
        Option("baudrate", int, 115200, "baud rate", in_range(50, 16_000_000)),
        Option("bytesize", int, 8, "data bits", choices=(5, 6, 7, 8)),
        Option("parity", str, "N", "parity: N, E or O", choices=PARITIES),
        Option("stopbits", int, 1, "stop bits", choices=(1, 2)),
        Option("timeout_s", (int, float), 0.5, "read timeout", at_most(60)),
    ],
    "modbus_tcp": [
        Option("host", str, "", "IP address or host name of the device or gateway"),
        Option("port", int, 502, "TCP port", in_range(1, 65535)),
        Option("timeout_s", (int, float), 1.0, "answer timeout per request", in_range(0.01, 30)),
        Option("retries", int, 0, "immediate retries of a timed-out request (each can delay the bus by one "
               "timeout; the next poll retries anyway)", in_range(0, 3)),
    ],
    "modbus_rtu": [
        Option("port", str, "", "serial device of the RS-485 adapter, e.g. /dev/ttyUSB0"),
        Option("baudrate", int, 9600, "baud rate", in_range(50, 16_000_000)),
        Option("bytesize", int, 8, "data bits", choices=(7, 8)),
        Option("parity", str, "N", "parity: N, E or O", choices=PARITIES),
        Option("stopbits", int, 1, "stop bits", choices=(1, 2)),
        Option("timeout_s", (int, float), 0.5, "answer timeout per request", in_range(0.01, 30)),
        Option("retries", int, 0, "immediate retries of a timed-out request", in_range(0, 3)),
    ],
}

# options a real backend cannot do without: type -> [(key, what it is)]
_REAL_REQUIRED = {
    "serial": [("port", "the serial device, e.g. /dev/ttyUSB0")],
    "modbus_tcp": [("host", "the device's IP address or host name")],
    "modbus_rtu": [("port", "the RS-485 adapter's serial device, e.g. /dev/ttyUSB0")],
}


def validate_bus(bus_type: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check a bus table's type-specific options (keys `type` and `backend` are checked by the config loader and
    ignored here, but `backend` decides whether real-only keys are required). Returns (values, [(key, msg)])."""
    schema = BUS_OPTIONS.get(bus_type)
    if schema is None:
        return {}, [("type", f"expected one of {', '.join(BUS_OPTIONS)}, got {bus_type!r}")]
    specific = {k: v for k, v in options.items() if k not in GENERIC_KEYS}
    values, errors = parse_options(schema, specific)
    if options.get("backend", "real") == "real":
        for key, what in _REAL_REQUIRED.get(bus_type, []):
            if key in values and not values[key] and not any(k == key for k, _ in errors):
                errors.append((key, f"missing: expected {what} (or backend = \"emulated\")"))
    return values, errors


def bus_config(context: Any, bus: str | None, types: tuple[str, ...], sensor: str) -> tuple[str, dict[str, Any], bool]:
    """(type, validated options, emulated?) of the bus a sensor is wired to; ConfigurationError naming the sensor
    if the bus is missing or of the wrong type."""
    wanted = " or ".join(types)
    if not bus:
        raise ConfigurationError(f"{sensor}.bus: missing: expected the name of a [buses.NAME] table of type {wanted}")
    table = context.buses.get(bus)
    if table is None:
        raise ConfigurationError(f"{sensor}.bus: expected the name of a [buses.NAME] table of type {wanted} "
                                 f"(defined: {', '.join(context.buses) or 'none'}), got {bus!r}")
    bus_type = table.get("type")
    if bus_type not in types:
        raise ConfigurationError(f"{sensor}.bus: bus {bus!r} has type {bus_type!r}, expected {wanted}")
    emulated = bool(context.emulate) or table.get("backend", "real") == "emulated"
    values, errors = validate_bus(bus_type, {**table, "backend": "emulated" if emulated else "real"})
    if errors:
        raise ConfigurationError("; ".join(f"buses.{bus}.{k}: {m}" for k, m in errors))
    return bus_type, values, emulated


__all__ = ["BUS_OPTIONS", "validate_bus", "bus_config"]
