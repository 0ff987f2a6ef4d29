"""What a sensor looks like to the agent: a `SlowSource` polled for `Reading`s or a `StreamSource` yielding `Block`s.

Drivers are found by name in `DRIVERS` (module path and class, imported lazily so that importing `hal` never
needs hardware libraries). Each driver class declares `OPTIONS` (a `hal.options` schema) and is constructed as
`Driver(name, options, context)` with already-validated options; `open()` touches the hardware, `close()` is
idempotent. A read never raises for a bus fault: it returns values with quality `bad`.

Declared channels (what a consumer may learn before the first read, e.g. Sparkplug's births): a slow source
offers `channels() -> [(channel, unit)]`, every channel its `poll()` may return, and optionally
`channel_types() -> {channel: bool | int | float | str}` (float when absent); a stream source has `axes`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from hal.errors import ConfigurationError
from hal.options import Option, parse_options
from hal.types import Block, Reading


@runtime_checkable
class SlowSource(Protocol):
    """A sensor read every `interval_s`: temperature, a Modbus register map, a GPIO state."""

    name: str
    kind: ClassVar[str]  # "slow"

    def open(self) -> None: ...
    def poll(self) -> list[Reading]: ...
    def close(self) -> None: ...


@runtime_checkable
class StreamSource(Protocol):
    """A high-rate sensor (accelerometer FIFO, sensor node) delivering contiguous blocks of samples."""

    name: str
    kind: ClassVar[str]  # "stream"
    rate_hz: float

    def open(self) -> None: ...
    def read_block(self, timeout: float) -> Block | None: ...
    def close(self) -> None: ...


@dataclass
class HalContext:
    """What a driver may use: the buses described in the config, and the emulated plant when emulating.

    `buses` maps a bus name to its (validated) options table; `emulate` forces every bus to its emulated backend.
    Opened bus objects are shared between the drivers on the same bus and closed by `close()`.
    """

    emulate: bool = True
    buses: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    plant: Any = None
    clock: Any = None  # hal.clock: the real clock, or a scaled one for faster-than-real-time emulation
    _opened: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.clock is None:
            from hal.clock import REAL_CLOCK
            self.clock = REAL_CLOCK

    def get_plant(self) -> Any:
        with self._lock:
            if self.plant is None:
                from hal.emulated.plant import Plant
                self.plant = Plant(clock=self.clock)
            return self.plant

    def lookup(self, key: str) -> Any:
        """The object shared under `key` if it was opened, else None (scenarios find emulated buses this way)."""
        with self._lock:
            return self._opened.get(key)

    def opened(self, prefix: str = "") -> dict[str, Any]:
        """The shared objects whose key starts with `prefix` (e.g. "sensornode.emulator.")."""
        with self._lock:
            return {k: v for k, v in self._opened.items() if k.startswith(prefix)}

    def shared(self, key: str, factory: Any) -> Any:
        """Return the object cached under `key`, creating it with `factory()` once (buses, servers)."""
        with self._lock:
            if key not in self._opened:
                self._opened[key] = factory()
            return self._opened[key]

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, {}
        for obj in reversed(list(opened.values())):
            close = getattr(obj, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # closing must not mask the reason we are closing
                    pass


# driver name -> "module:Class". Extend here when adding a driver.
DRIVERS: dict[str, str] = {
    "emulated.vibration": "hal.emulated.sources:EmulatedVibration",
    "emulated.temperature": "hal.emulated.sources:EmulatedTemperature",
    "sensornode": "hal.sensornode.driver:SensorNode",
    "modbus": "hal.modbus.driver:ModbusDevice",
    "adxl345": "hal.drivers.adxl345:ADXL345",
    "bme280": "hal.drivers.bme280:BME280",
    "ads1115": "hal.drivers.ads1115:ADS1115",
    "ina219": "hal.drivers.ina219:INA219",
    "gpio.state": "hal.gpio:GpioState",
    "gpio.counter": "hal.gpio:GpioCounter",
    "gpio.frequency": "hal.gpio:GpioFrequency",
    "gpio.output": "hal.gpio:GpioOutput",
}


def driver_class(driver: str) -> type:
    try:
        target = DRIVERS[driver]
    except KeyError:
        raise ConfigurationError(f"unknown driver {driver!r} (known: {', '.join(sorted(DRIVERS))})") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def validate_driver_options(driver: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check a driver's options. Returns (values, [(key, message)]); raises ConfigurationError for an unknown driver."""
    cls = driver_class(driver)
    schema: list[Option] = getattr(cls, "OPTIONS", [])
    values, errors = parse_options(schema, options)
    validate = getattr(cls, "validate", None)  # optional cross-option checks: validate(values) -> [(key, message)]
    if not errors and validate is not None:
        errors = list(validate(values))
    return values, errors


def open_source(driver: str, name: str, options: Mapping[str, Any], context: HalContext,
                bus: str | None = None) -> SlowSource | StreamSource:
    """Construct (not open) a driver with validated options; raise ConfigurationError listing every problem.

    Drivers are constructed as `Driver(name, options, context, bus=BUS_NAME_OR_NONE)`; `context.buses[bus]` is the
    bus's options table.
    """
    values, errors = validate_driver_options(driver, options)
    if errors:
        raise ConfigurationError("; ".join(f"{name}.{k}: {m}" for k, m in errors))
    return driver_class(driver)(name, values, context, bus=bus)
