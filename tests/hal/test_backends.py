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


# -- emulation settings live on the emulated side, keyed by driver (hal/emulated/drivers.py) --------------------------

def test_no_real_driver_declares_an_emulation_option() -> None:
    from hal.emulated.drivers import EMULATION_OPTIONS
    from hal.sources import DRIVERS, driver_class

    for name, target in DRIVERS.items():
        if target.startswith("hal.emulated."):
            continue  # the emulated sources are emulation through and through
        own = [o.name for o in getattr(driver_class(name), "OPTIONS", [])]
        assert not [k for k in own if k.startswith("emulate")], f"{name}: move it to EMULATION_OPTIONS"
    assert all(k in DRIVERS or k.rsplit(".", 1)[0] in DRIVERS for k in EMULATION_OPTIONS)  # driver[.table]
    from hal.drivers.ads1115 import CHANNEL_OPTIONS
    from hal.modbus.registermap import REGISTER_OPTIONS, Register
    assert "signal" not in [o.name for o in CHANNEL_OPTIONS]
    assert not {"signal", "emulate_value"} & ({o.name for o in REGISTER_OPTIONS} | set(Register.__dataclass_fields__))


def test_a_config_keeps_its_emulation_options_and_gets_their_defaults() -> None:
    from hal.sources import validate_driver_options

    values, errors = validate_driver_options("bme280", {"emulate_signal": "bearing_temperature"})
    assert errors == [] and values["emulate_signal"] == "bearing_temperature"
    values, errors = validate_driver_options("gpio.counter", {"pin": 5})
    assert errors == [] and values["emulate_signal"] == "part_rate"
    _, errors = validate_driver_options("gpio.state", {"pin": 5, "emulate_signl": "x"})
    assert errors and errors[0][0] == "emulate_signl" and "emulate_signal" in errors[0][1]
    _, errors = validate_driver_options("gpio.state", {"pin": 5, "emulate_signal": 3})
    assert [k for k, _ in errors] == ["emulate_signal"]
    _, errors = validate_driver_options("ads1115", {"channels": [{"name": "p", "kind": "loop_4_20ma",
                                                                 "signal": "loop_current_ma"}]})
    assert errors == []
    _, errors = validate_driver_options("ads1115", {"channels": [{"name": "p", "signal": 4}]})
    assert errors == [("channels[0].signal", "expected a string, got 4")]
    _, errors = validate_driver_options("ads1115", {"channels": [{"name": "p", "signl": "x"}]})
    assert errors[0][0] == "channels[0].signl" and "signal" in errors[0][1]


def test_the_emulated_bus_prepares_the_chip_a_driver_expects() -> None:
    from hal.sources import driver_name, open_source

    ctx = HalContext(emulate=True, buses={"i2c": {"type": "i2c"}})
    try:
        drv = open_source("bme280", "bearing", {"emulate_signal": "bearing_temperature"}, ctx, bus="i2c")
        assert driver_name(drv) == "bme280"
        chip = ctx.lookup("i2c:i2c").chips[0x76]
        assert type(chip).__name__ == "BME280Model" and chip.temperature_signal == "bearing_temperature"
        open_source("ina219", "supply", {"shunt_ohm": 0.05}, ctx, bus="i2c")
        assert ctx.lookup("i2c:i2c").chips[0x40].shunt_ohm == 0.05
    finally:
        ctx.close()


def test_a_real_bus_prepares_nothing() -> None:
    from hal.sources import open_source

    ctx = HalContext(emulate=False, buses={"i2c": {"type": "i2c", "bus": 250}})
    try:
        drv = open_source("bme280", "cabinet", {}, ctx, bus="i2c")  # constructing does not touch the adapter
        assert drv.dev.bus.path == "/dev/i2c-250" and drv.dev.bus._smbus is None
    finally:
        ctx.close()


def test_driver_name_finds_a_registered_base_class() -> None:
    from hal.drivers.bme280 import BME280
    from hal.sources import driver_name

    class Mine(BME280):
        pass

    assert driver_name(Mine.__new__(Mine)) == "bme280"
    assert driver_name(object()) == ""


def test_a_register_carries_its_emulation_options_opaquely() -> None:
    from hal.modbus.registermap import load_profile, parse_registers

    regs, errors = parse_registers([{"name": "v", "address": 0, "signal": "line_voltage_l1"},
                                    {"name": "k", "address": 1, "emulate_value": 7}])
    assert errors == []
    assert dict(regs[0].emulation) == {"signal": "line_voltage_l1", "emulate_value": 0}
    assert dict(regs[1].emulation) == {"signal": "", "emulate_value": 7}
    _, errors = parse_registers([{"name": "v", "address": 0, "signal": 5}])
    assert errors == [("[0].signal", "expected a string, got 5")]
    assert dict(load_profile("sdm630").registers[0].emulation)["signal"] == "line_voltage_l1"
