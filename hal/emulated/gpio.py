"""Emulated GPIO: gpiozero's MockFactory with time-stamped edges and plant-driven stimuli.

`EmulatedPinFactory` is a `MockFactory` whose pins (`EmulatedPin`) can be driven at an explicit tick
(`drive_at(state, ticks)`), and whose `ticks()` come from an injectable clock, so edge timing is exact in tests.
`EmulatedGpioBus` holds the factory of one emulated GPIO bus and, when a driver asks for it, a stimulus thread that
drives an input from a plant signal: a level (machine running), pulses (part count) or a square wave (tachometer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin
from gpiozero.pins.pi import PiPin


class EmulatedPin(MockPin):
    _at: float | None = None

    def drive_at(self, state: bool, ticks: float) -> None:
        """Drive an input to `state` with the edge stamped `ticks` (factory ticks, seconds)."""
        self._at = ticks
        try:
            if state:
                self.drive_high()
            else:
                self.drive_low()
        finally:
            self._at = None

    def _call_when_changed(self) -> None:
        ticks = self._at if self._at is not None else self.factory.ticks()
        PiPin._call_when_changed(self, ticks, self._state)


class EmulatedPinFactory(MockFactory):
    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        super().__init__(pin_class=EmulatedPin)
        self._clock = clock or time.monotonic

    def ticks(self) -> float:  # type: ignore[override]
        return self._clock()

    @staticmethod
    def ticks_diff(later: float, earlier: float) -> float:
        return later - earlier


class _Stimulus:
    def __init__(self, pin: EmulatedPin, kind: str, fn: Callable[[float], float], active_high: bool,
                 width_s: float) -> None:
        self.pin, self.kind, self.fn, self.active_high, self.width_s = pin, kind, fn, active_high, width_s
        self.next_t = 0.0
        self.last_t = 0.0  # time of the last edge driven
        self.active = False


class EmulatedGpioBus:
    """One emulated GPIO bus: the pin factory plus plant stimuli (`stimulate`) run by one daemon thread."""

    def __init__(self, name: str = "gpio", plant: Any = None, clock: Callable[[], float] | None = None) -> None:
        self.name = name
        self.plant = plant
        clock = clock or getattr(plant, "clock", None)  # the plant's clock (hal.clock) unless a test passes one
        self.factory = EmulatedPinFactory(clock)
        self.time_ns: Callable[[], int] = getattr(clock, "time_ns", None) or time.time_ns  # reading timestamps
        self._speed = float(getattr(clock, "speed", 1.0) or 1.0)  # clock seconds per real second
        # the stimulus thread waits on the clock (hal.clock), so that on virtual time (ManualClock) it wakes at each
        # edge's plant time; a bare callable clock (a test's) is scaled real time
        self._wait: Callable[[threading.Event, float], bool] = (
            getattr(clock, "wait", None) or (lambda event, s: event.wait(s / self._speed)))
        self._stimuli: list[_Stimulus] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.worst_edge_late_s = 0.0  # clock seconds: how late a stimulus edge reached its pin after its stamp
        self._t0 = self.factory.ticks()
        if plant is not None and clock is getattr(plant, "clock", None):
            self._t0 -= plant.now()  # pin time and plant time agree

    def prepare(self, driver: Any) -> None:
        """Drive an input driver's pin from its plant signal (`hal.emulated.drivers.GPIO_STIMULI`)."""
        from hal.emulated.drivers import gpio_stimulus

        stimulus = gpio_stimulus(driver)
        if stimulus is not None:
            kind, signal = stimulus
            self.stimulate(driver.pin_name, kind, signal, active_high=driver.active_high)

    def pin(self, number: Any) -> EmulatedPin:
        return self.factory.pin(number)

    def stimulate(self, pin: Any, kind: str, signal: str, active_high: bool = True, width_s: float = 0.05) -> None:
        """Drive input `pin` from plant signal `signal`: kind "level" (active while the signal is > 0.5),
        "pulses" (one pulse of `width_s` per event at the signal's rate in Hz) or "square" (a square wave at the
        signal's frequency in Hz)."""
        if self.plant is None:
            return
        fn = lambda t: self.plant.signal(signal, t)  # noqa: E731
        stim = _Stimulus(self.factory.pin(pin), kind, fn, active_high, width_s)
        if kind == "level":  # the input shows the plant's state from the start
            try:
                self._set(stim, fn(self.factory.ticks() - self._t0) > 0.5, self.factory.ticks())
            except Exception:
                pass
        with self._lock:
            self._stimuli.append(stim)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"gpio-stimuli-{self.name}", daemon=True)
                self._thread.start()

    def _set(self, s: _Stimulus, active: bool, now: float) -> None:
        if s.active != active or s.pin.state != (active == s.active_high):
            s.active = active
            s.pin.drive_at(active == s.active_high, now)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.factory.ticks()
            t = now - self._t0
            wake = now + 0.01
            with self._lock:
                stimuli = list(self._stimuli)
            for s in stimuli:
                try:
                    value = s.fn(t)
                except Exception:
                    continue
                if s.kind == "level":
                    self._set(s, value > 0.5, now)
                    continue
                if value <= 0:
                    self._set(s, False, now)
                    s.next_t = now
                    continue
                # the rate may have risen since the next edge was planned (a start-up ramp): never wait longer
                # than the current rate's half period after the last edge
                if s.kind == "square":
                    s.next_t = min(s.next_t, s.last_t + 0.5 / value)
                elif s.active:
                    s.next_t = min(s.next_t, s.last_t + min(s.width_s, 0.5 / value))
                else:
                    s.next_t = min(s.next_t, s.last_t + max(1.0 / value - s.width_s, 0.5 / value))
                if now - s.next_t > 0.1:  # first edge, or far behind (a suspended machine): no burst of edges
                    s.next_t = now
                if now >= s.next_t:
                    s.last_t = s.next_t
                    if s.kind == "square":
                        self._set(s, not s.active, s.next_t)
                        s.next_t += 0.5 / value
                    elif not s.active:
                        self._set(s, True, s.next_t)
                        s.next_t += min(s.width_s, 0.5 / value)
                    else:
                        self._set(s, False, s.next_t)
                        s.next_t += max(1.0 / value - s.width_s, 0.5 / value)
                    # an edge is stamped when it was due; on a busy machine it reaches the pin (and a counter's poll)
                    # later: the lag is measured so that tests can allow for it instead of assuming an idle CPU
                    self.worst_edge_late_s = max(self.worst_edge_late_s, self.factory.ticks() - s.last_t)
                wake = min(wake, s.next_t)
            self._wait(self._stop, max(wake - self.factory.ticks(), 0.0005))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.factory.close()


def emulated_gpio_bus(context: Any, name: str, bus_type: str, values: Any) -> EmulatedGpioBus:
    """The ("gpio", "emulated") backend of `hal.backends`: mock pins stimulated from the context's plant."""
    return EmulatedGpioBus(name, context.get_plant())


__all__ = ["EmulatedPin", "EmulatedPinFactory", "EmulatedGpioBus", "emulated_gpio_bus"]
