"""Emulation settings keyed by driver: which plant signal drives what a real driver reads, and how an emulated bus
prepares the device a driver expects.

Owns the `emulate_*` options (merged into a driver's schema by `hal.sources.validate_driver_options` through the
("driver-options", "emulated") row of `hal.backends`, so configs keep them and a real run ignores them) and the
per-driver preparation the emulated buses run from their `prepare(driver)`: a GPIO input stimulated from a plant
signal, a chip model placed at the driver's address and wired to the plant (BME280 temperature signal, ADS1115
inputs, INA219 shunt). Must not touch the real drivers' code paths: the real buses' `prepare` does nothing.

The Modbus register keys `signal` / `emulate_value` are declared here too ("modbus.registers"); the register map
carries them opaquely in `Register.emulation` for `EmulatedModbusServer`.
"""

from __future__ import annotations

from typing import Any

from hal.options import Option

# driver name (as in `hal.sources.DRIVERS`), or driver name + "." + key of a nested table list, -> options only an
# emulated run uses
EMULATION_OPTIONS: dict[str, list[Option]] = {
    "gpio.state": [Option("emulate_signal", str, "running",
                          "emulation only: plant signal driving the input (\"\": none)")],
    "gpio.counter": [Option("emulate_signal", str, "part_rate", "emulation only: plant signal (events per second)")],
    "gpio.frequency": [Option("emulate_signal", str, "shaft_speed_hz", "emulation only: plant signal (Hz)")],
    "bme280": [Option("emulate_signal", str, "cabinet_temperature",
                      "emulation only: the plant signal the temperature follows (e.g. bearing_temperature)")],
    "ads1115.channels": [Option("signal", str, "", "emulation only: the plant signal on this input")],
    # a Modbus register table (the modbus driver's `registers` and the profiles); kept in `Register.emulation`
    "modbus.registers": [
        Option("signal", str, "", "emulation only: the plant signal that drives this register"),
        Option("emulate_value", (int, float, str, bool), 0,
               "emulation only: a constant value when there is no signal"),
    ],
}

# GPIO input driver -> how the plant signal drives the pin (see `EmulatedGpioBus.stimulate`)
GPIO_STIMULI: dict[str, str] = {"gpio.state": "level", "gpio.counter": "pulses", "gpio.frequency": "square"}


def emulation_options(driver: str) -> list[Option]:
    """The emulation-only options of `driver` or of a nested table list (`"ads1115.channels"`,
    `"modbus.registers"`); none for most."""
    return list(EMULATION_OPTIONS.get(driver, []))


def emulation_option(driver: Any, key: str) -> Any:
    """A driver object's emulation option: as configured, else the declared default."""
    from hal.sources import driver_name

    if key in getattr(driver, "options", {}):
        return driver.options[key]
    for opt in EMULATION_OPTIONS.get(driver_name(driver), []):
        if opt.name == key:
            return opt.default
    raise KeyError(f"{type(driver).__name__}: no emulation option {key!r}")


def gpio_stimulus(driver: Any) -> tuple[str, str] | None:
    """(stimulus kind, plant signal) for a GPIO input driver, or None (an output, or `emulate_signal = ""`)."""
    from hal.sources import driver_name

    kind = GPIO_STIMULI.get(driver_name(driver))
    if kind is None:
        return None
    signal = emulation_option(driver, "emulate_signal")
    return (kind, signal) if signal else None


def _bme280(chip: Any, driver: Any) -> None:
    chip.temperature_signal = emulation_option(driver, "emulate_signal")


def _ads1115(chip: Any, driver: Any) -> None:
    for channel in driver.chans:
        chip.wire(channel)


def _ina219(chip: Any, driver: Any) -> None:
    chip.shunt_ohm = driver.shunt_ohm  # the resistor on the board the driver is configured for


# I2C driver -> what its chip model needs beyond being placed at the address
CHIP_PREPARATION = {"bme280": _bme280, "ads1115": _ads1115, "ina219": _ina219}


def prepare_chip(chip: Any, driver: Any) -> None:
    from hal.sources import driver_name

    prepare = CHIP_PREPARATION.get(driver_name(driver))
    if prepare is not None:
        prepare(chip, driver)


__all__ = ["EMULATION_OPTIONS", "GPIO_STIMULI", "CHIP_PREPARATION", "emulation_options", "emulation_option",
           "gpio_stimulus", "prepare_chip"]
