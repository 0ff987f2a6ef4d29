"""The backend table (hal/backends.py): every bus type has a real and an emulated row, each row imports to a
callable, the context shares what it builds, and a missing row is a clear error."""

from __future__ import annotations

import pytest

from hal.backends import BACKENDS, EMULATED, REAL, implementation, open_bus
from hal.buses import BUS_OPTIONS
from hal.sources import HalContext


def test_every_bus_type_has_a_real_and_an_emulated_backend() -> None:
    for bus_type in BUS_OPTIONS:
        assert (bus_type, REAL) in BACKENDS, bus_type
        assert (bus_type, EMULATED) in BACKENDS, bus_type


def test_every_row_names_a_callable_in_a_module_of_its_side() -> None:
    for (bus_type, backend), target in BACKENDS.items():
        module = target.partition(":")[0]
        assert module.startswith("hal.emulated.") == (backend == EMULATED), (bus_type, backend, target)
        assert callable(implementation(bus_type, backend)), target


def test_a_missing_row_names_what_is_registered() -> None:
    with pytest.raises(LookupError, match=r"no real backend for 'plant' \(registered: .*i2c/emulated"):
        implementation("plant", REAL)


def test_open_bus_builds_once_per_name_and_the_context_closes_it() -> None:
    ctx = HalContext(emulate=True, buses={"b1": {"type": "i2c"}})
    values = {"bus": 1, "baudrate": 400_000}
    bus = open_bus(ctx, "i2c", "b1", "i2c", values, emulated=True)
    assert type(bus).__name__ == "EmulatedI2CBus" and bus.baudrate == 400_000 and bus.plant is ctx.plant
    assert open_bus(ctx, "i2c", "b1", "i2c", values, emulated=True) is bus
    assert ctx.lookup("i2c:b1") is bus
    ctx.close()
    assert ctx.lookup("i2c:b1") is None


def test_the_real_i2c_backend_does_not_open_the_adapter_until_used() -> None:
    ctx = HalContext(emulate=False)
    bus = open_bus(ctx, "i2c", "b1", "i2c", {"bus": 250, "baudrate": 100_000}, emulated=False)
    assert type(bus).__name__ == "RealI2CBus" and bus.path == "/dev/i2c-250"
    with pytest.raises(OSError):
        bus.open()  # no such adapter here
    ctx.close()
