"""GPIO through gpiozero: inputs (machine state, part counter, tachometer) and outputs marked writable.

Drivers play gpiozero's device role and are handed their pin factory (never the global `Device.pin_factory`): the
real one from gpiozero (`lgpio` on current Pi OS, or the bus's `pin_factory`) or the emulated bus's MockFactory.
Edges arrive on gpiozero's callback thread with the factory's tick; drivers keep their own state under a lock.

* `gpio.state`: the active/inactive state of a contact (machine running, e-stop).
* `gpio.counter`: counts activations that last at least `debounce_ms` (a level must be stable that long to count,
  so contact bounce on press and release never adds counts). MockPin ignores bounce_time, and so do we: the
  debounce is ours, and tested.
* `gpio.frequency`: edge rate over a sliding window: frequency in Hz and shaft speed in rpm (`pulses_per_rev`).
* `gpio.output`: a relay or stack light; exists only with `writable = true`; `set(bool)`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

from hal.options import Option, at_most, in_range
from hal.types import Quality, Reading, now_ns

_FACTORIES = {"lgpio": "gpiozero.pins.lgpio:LGPIOFactory", "rpigpio": "gpiozero.pins.rpigpio:RPiGPIOFactory",
              "pigpio": "gpiozero.pins.pigpio:PiGPIOFactory", "native": "gpiozero.pins.native:NativeFactory"}


class RealGpioBus:
    def __init__(self, name: str, pin_factory: str = "") -> None:
        import importlib

        from gpiozero import Device

        from hal.errors import Unsupported

        self.name = name
        try:
            if pin_factory:
                module, _, cls = _FACTORIES[pin_factory].partition(":")
                self.factory = getattr(importlib.import_module(module), cls)()
            else:
                self.factory = Device._default_pin_factory()  # gpiozero's own fallback order, with its warnings
        except Exception as e:  # BadPinFactory, ImportError, no /dev/gpiochip: not a Pi, or lgpio missing
            raise Unsupported(f"GPIO bus {name}: no usable gpiozero pin factory ({e}); on a Raspberry Pi install "
                              "python3-lgpio (or pip install lgpio), elsewhere use backend = \"emulated\" or "
                              "--emulate") from None

    def prepare(self, driver: Any) -> None:
        """Nothing to prepare: real inputs are driven by the machine (an emulated bus stimulates them)."""

    def close(self) -> None:
        self.factory.close()


def gpio_bus(context: Any, bus: str | None, sensor: str = "gpio") -> Any:
    """The shared GPIO bus object (with `.factory`); a sensor without `bus` uses the default GPIO header."""
    emulated = bool(context.emulate)
    values: dict[str, Any] = {"pin_factory": ""}
    if bus is not None:
        from hal.buses import bus_config
        _, values, emulated = bus_config(context, bus, ("gpio",), sensor)
    from hal.backends import backend_name, implementation

    factory = implementation("gpio", backend_name(emulated))  # the emulated bus is registered in hal.backends
    return context.shared(f"gpio:{bus or '(header)'}", lambda: factory(context, bus or "gpio", "gpio", values))


def real_gpio_bus(context: Any, name: str, bus_type: str, values: Mapping[str, Any]) -> RealGpioBus:
    """The ("gpio", "real") backend of `hal.backends`."""
    return RealGpioBus(name, values.get("pin_factory", ""))


def _make(sensor: str, cls: Any, pin: Any, **kwargs: Any) -> Any:
    """Construct a gpiozero device; a pin that is invalid or already used is a configuration error."""
    from gpiozero.exc import GPIOZeroError

    from hal.errors import ConfigurationError
    try:
        return cls(pin, **kwargs)
    except GPIOZeroError as e:
        raise ConfigurationError(f"{sensor}.pin: {e}") from None


def _pin_check(v: Any) -> str | None:
    if isinstance(v, bool):
        return "expected a BCM GPIO number 0..27 or a pin name like \"GPIO17\" or \"BOARD11\""
    if isinstance(v, int):
        return None if 0 <= v <= 53 else "expected a BCM GPIO number 0..53"
    return None if v.strip() else "expected a pin name like \"GPIO17\" or \"BOARD11\""


PIN = Option("pin", (int, str), doc="BCM GPIO number (17) or name (\"GPIO17\", \"BOARD11\")", check=_pin_check)
PULL = Option("pull", str, "up", "internal pull resistor", choices=("up", "down", "none"))
ACTIVE = Option("active", str, "", "electrical level that means active (default: low with pull up, else high)",
                choices=("", "low", "high"))


class _GpioInput:
    kind: ClassVar[str] = "slow"

    def __init__(self, name: str, options: Mapping[str, Any], context: Any, bus: str | None = None) -> None:
        self.name = name
        self.options = dict(options)
        self.pin_name = options["pin"]
        self.pull = options.get("pull", "up")
        active = options.get("active") or ("low" if self.pull == "up" else "high")
        self.active_high = active == "high"
        self.bus = gpio_bus(context, bus, name)
        self.factory = self.bus.factory
        self.time_ns = getattr(self.bus, "time_ns", now_ns)  # an emulated bus stamps readings on its clock
        self.device: Any = None
        self.lock = threading.Lock()
        self.counters = {"polls": 0, "edges": 0}

    def open(self) -> None:
        from gpiozero import InputDevice

        if self.device is not None:
            return
        dev = _make(self.name, InputDevice, self.pin_name, pull_up=None, active_state=self.active_high,
                    pin_factory=self.factory)
        try:
            if self.pull != "none":
                dev.pin.pull = self.pull
            self.started(dev)
            dev.pin.edges = "both"
            dev.pin.when_changed = self._edge
        except BaseException:
            dev.close()  # a constructor that fails half-way closes what it opened
            raise
        self.device = dev
        self.bus.prepare(self)  # an emulated bus drives the pin from the plant (hal.emulated.drivers)

    def started(self, dev: Any) -> None:
        pass

    def _edge(self, ticks: float, state: Any) -> None:
        with self.lock:
            self.counters["edges"] += 1
            self.edge(ticks, bool(state) == self.active_high)

    def edge(self, ticks: float, active: bool) -> None:
        pass

    def close(self) -> None:
        dev, self.device = self.device, None
        if dev is not None:
            dev.close()

    def _not_open(self) -> list[Reading]:
        return [Reading.bad(self.name, "GPIO input not open")]


class GpioState(_GpioInput):
    """`<name>`: true while the input is active (machine running, e-stop pressed)."""

    OPTIONS = [PIN, PULL, ACTIVE]

    def channels(self) -> list[tuple[str, str]]:
        return [(self.name, "")]

    def channel_types(self) -> dict[str, type]:
        return {self.name: bool}

    def poll(self) -> list[Reading]:
        self.counters["polls"] += 1
        if self.device is None:
            return self._not_open()
        return [Reading(self.name, self.time_ns(), bool(self.device.is_active), "", Quality.GOOD)]


class GpioCounter(_GpioInput):
    """`<name>`: activations counted since open; an activation counts once the input has been active for
    `debounce_ms` without interruption (stability debounce: bounce on press and on release never counts)."""

    OPTIONS = [PIN, PULL, ACTIVE,
               Option("debounce_ms", (int, float), 10.0, "a level must be stable this long to count",
                      in_range(0, 10000))]

    def started(self, dev: Any) -> None:
        self.debounce_s = float(self.options["debounce_ms"]) / 1000.0
        self.count = 0
        self._raw = bool(dev.is_active)
        self._stable = self._raw
        self._since = self.factory.ticks()

    def _settle(self, now: float) -> None:
        """Commit the current raw level if it has lasted `debounce_s` and differs from the stable one."""
        if self._raw != self._stable and self.factory.ticks_diff(now, self._since) >= self.debounce_s:
            self._stable = self._raw
            if self._stable:
                self.count += 1

    def edge(self, ticks: float, active: bool) -> None:
        self._settle(ticks)
        if active != self._raw:
            self._raw = active
            self._since = ticks

    def channels(self) -> list[tuple[str, str]]:
        return [(self.name, "count")]

    def channel_types(self) -> dict[str, type]:
        return {self.name: int}

    def poll(self) -> list[Reading]:
        self.counters["polls"] += 1
        if self.device is None:
            return self._not_open()
        with self.lock:
            t_ns = self.time_ns()  # stamped when sampled, not after a preemption between the two
            self._settle(self.factory.ticks())
            count = self.count
        return [Reading(self.name, t_ns, count, "count", Quality.GOOD)]


class GpioFrequency(_GpioInput):
    """`<name>.frequency` (Hz, active edges over the last `window_s`) and `<name>.speed` (rpm =
    frequency / pulses_per_rev x 60); 0 when no edge came for `timeout_s`."""

    OPTIONS = [PIN, PULL, ACTIVE,
               Option("pulses_per_rev", int, 1, "tachometer pulses per shaft revolution", in_range(1, 10000)),
               Option("window_s", (int, float), 1.0, "averaging window", at_most(3600)),
               Option("timeout_s", (int, float), 2.0, "no edge for this long means stopped", at_most(3600)),
               Option("max_hz", (int, float), 5000.0, "ignore edges closer than 1/max_hz (glitches)", at_most(1e6))]

    def started(self, dev: Any) -> None:
        self.edges: deque[float] = deque(maxlen=100000)
        self.ppr = int(self.options["pulses_per_rev"])
        self.window_s = float(self.options["window_s"])
        self.timeout_s = float(self.options["timeout_s"])
        self.min_period = 1.0 / float(self.options["max_hz"])
        self.counters["glitches"] = 0

    def edge(self, ticks: float, active: bool) -> None:
        if not active:
            return
        if self.edges and self.factory.ticks_diff(ticks, self.edges[-1]) < self.min_period:
            self.counters["glitches"] += 1
            return
        self.edges.append(ticks)

    def frequency(self, now: float) -> float:
        diff = self.factory.ticks_diff
        with self.lock:
            edges = list(self.edges)
        if len(edges) < 2 or diff(now, edges[-1]) > self.timeout_s:
            return 0.0
        recent = [t for t in edges if diff(now, t) <= self.window_s]
        if len(recent) < 2:
            recent = edges[-2:]  # slower than the window: the last period
        span = diff(recent[-1], recent[0])
        return (len(recent) - 1) / span if span > 0 else 0.0

    def channels(self) -> list[tuple[str, str]]:
        return [(f"{self.name}.frequency", "Hz"), (f"{self.name}.speed", "rpm")]

    def poll(self) -> list[Reading]:
        self.counters["polls"] += 1
        if self.device is None:
            return self._not_open()
        ts = self.time_ns()
        f = self.frequency(self.factory.ticks())
        return [Reading(f"{self.name}.frequency", ts, round(f, 4), "Hz", Quality.GOOD),
                Reading(f"{self.name}.speed", ts, round(f / self.ppr * 60.0, 3), "rpm", Quality.GOOD)]


def _writable_check(v: Any) -> str | None:
    return None if v is True else "expected true: an output exists only when the config marks it writable"


class GpioOutput:
    """`<name>`: the output's state; `set(True/False)` drives it (relay, stack light)."""

    kind: ClassVar[str] = "slow"
    OPTIONS = [PIN,
               Option("writable", bool, False, "must be true: outputs exist only when marked writable",
                      _writable_check),
               Option("initial", bool, False, "state at open"),
               Option("active", str, "high", "electrical level that means on", choices=("high", "low"))]

    @classmethod
    def validate(cls, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        if values.get("writable") is not True:
            return [("writable", "missing: expected writable = true: an output exists only when the config marks "
                                 "it writable")]
        return []

    def __init__(self, name: str, options: Mapping[str, Any], context: Any, bus: str | None = None) -> None:
        self.name = name
        self.pin_name = options["pin"]
        self.initial = bool(options["initial"])
        self.active_high = options["active"] == "high"
        self.bus = gpio_bus(context, bus, name)
        self.time_ns = getattr(self.bus, "time_ns", now_ns)
        self.device: Any = None
        self.counters = {"polls": 0, "writes": 0}

    def open(self) -> None:
        from gpiozero import DigitalOutputDevice

        if self.device is None:
            self.device = _make(self.name, DigitalOutputDevice, self.pin_name, active_high=self.active_high,
                                initial_value=self.initial, pin_factory=self.bus.factory)

    def set(self, on: bool) -> None:
        from hal.errors import Unsupported

        if self.device is None:
            raise Unsupported(f"{self.name}: output not open")
        self.counters["writes"] += 1
        if on:
            self.device.on()
        else:
            self.device.off()

    def write(self, channel: str | None, value: Any) -> bool:
        """The `set` command's path: switch the output, return the state read back from the pin."""
        if channel:
            raise ValueError(f"{self.name} is a single output; write it as {self.name!r}, not {channel!r}")
        if not isinstance(value, bool) and value not in (0, 1):
            raise ValueError(f"{self.name}: expected true or false, got {value!r}")
        self.set(bool(value))
        assert self.device is not None
        return bool(self.device.value)

    def channels(self) -> list[tuple[str, str]]:
        return [(self.name, "")]

    def channel_types(self) -> dict[str, type]:
        return {self.name: bool}

    def poll(self) -> list[Reading]:
        self.counters["polls"] += 1
        if self.device is None:
            return [Reading.bad(self.name, "GPIO output not open")]
        return [Reading(self.name, self.time_ns(), bool(self.device.value), "", Quality.GOOD)]

    def close(self) -> None:
        dev, self.device = self.device, None
        if dev is not None:
            dev.close()


__all__ = ["GpioState", "GpioCounter", "GpioFrequency", "GpioOutput", "gpio_bus", "RealGpioBus"]
