"""Which implementation serves a bus: one table, (bus type, backend) -> "module:callable", imported on first use.

Owns the choice of backend and nothing else. The real hal modules (`hal.i2c`, `hal.gpio`, `hal.serialbus`,
`hal.modbus.client`, `hal.sources`, `hal.sensornode.driver`) look their backend up here and never import
`hal.emulated`; the emulated side is named in this table by string only, so importing a real bus never imports an
emulator (and an emulator may import the real side it imitates without an import cycle). `tests/test_architecture.py`
checks the direction.

A bus factory is called as `factory(context, name, bus_type, values)` with the bus's validated options and returns
the bus object the drivers share (`HalContext.shared` under `"<kind>:<bus name>"`). Every bus has
`prepare(driver)`, called by a driver once it knows its address and options: a real bus does nothing, an emulated
one places and wires the device the driver expects (`hal.emulated.drivers`, keyed by driver).

The sensor node's rows are bus-like: the factory returns, per sensor, where the node is (`prepare(driver) ->
(port glob, board id)` at every open, `release(driver)` at close): the real one the configured port, the emulated
one a firmware emulator it boots on a pty for that driver.

Two rows are not buses: the emulated plant (`("plant", "emulated")`, called as `Plant(clock=...)`) and the
emulation-only options of a driver (`("driver-options", "emulated")`, `emulation_options(driver) -> [Option]`).
"""

from __future__ import annotations

import importlib
from typing import Any

REAL = "real"
EMULATED = "emulated"

BACKENDS: dict[tuple[str, str], str] = {
    ("i2c", REAL): "hal.i2c:real_i2c_bus",
    ("i2c", EMULATED): "hal.emulated.i2c:emulated_i2c_bus",
    ("gpio", REAL): "hal.gpio:real_gpio_bus",
    ("gpio", EMULATED): "hal.emulated.gpio:emulated_gpio_bus",
    ("serial", REAL): "hal.serialbus:real_serial_line",
    ("serial", EMULATED): "hal.emulated.serial:emulated_serial_line",
    ("modbus_tcp", REAL): "hal.modbus.client:real_modbus_bus",
    ("modbus_tcp", EMULATED): "hal.emulated.modbus:emulated_modbus_bus",
    ("modbus_rtu", REAL): "hal.modbus.client:real_modbus_bus",
    ("modbus_rtu", EMULATED): "hal.emulated.modbus:emulated_modbus_bus",
    ("plant", EMULATED): "hal.emulated.plant:Plant",
    ("sensornode", REAL): "hal.sensornode.driver:real_node_ports",
    ("sensornode", EMULATED): "hal.emulated.sensornode:emulated_node_ports",
    ("driver-options", EMULATED): "hal.emulated.drivers:emulation_options",
}


def backend_name(emulated: bool) -> str:
    return EMULATED if emulated else REAL


def implementation(bus_type: str, backend: str) -> Any:
    """The callable registered for (bus_type, backend), imported now; a missing row is a LookupError naming what
    is registered."""
    try:
        target = BACKENDS[(bus_type, backend)]
    except KeyError:
        known = ", ".join(f"{t}/{b}" for t, b in BACKENDS)
        raise LookupError(f"no {backend} backend for {bus_type!r} (registered: {known})") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def open_bus(context: Any, kind: str, name: str, bus_type: str, values: dict[str, Any], emulated: bool) -> Any:
    """The bus object shared under `"<kind>:<name>"`, built by the table's factory on first use."""
    factory = implementation(bus_type, backend_name(emulated))
    return context.shared(f"{kind}:{name}", lambda: factory(context, name, bus_type, values))


__all__ = ["BACKENDS", "REAL", "EMULATED", "backend_name", "implementation", "open_bus"]
