"""Clocks: where the emulated plant, the emulated buses and the drivers on them take their time from.

A clock has `time_ns()` (wall time, ns since the Unix epoch), `monotonic()` (seconds), `sleep(s)` and
`wait(event, s)`; calling it returns `monotonic()`, so it can be handed wherever a `clock()` callable is expected
(`EmulatedI2CBus(clock=...)`, `EmulatedPinFactory`). Time spans given to `sleep` and `wait` are clock seconds.

* `RealClock` (`REAL_CLOCK`): the system clocks. Real hardware always runs on it.
* `ScaledClock(speed)`: plant time runs `speed` times faster than real time, from the moment it was made (its
  `time_ns()` starts at the real wall time then). `sleep(1.0)` at speed 10 sleeps 0.1 s. Emulated sources, chips
  and drivers stamp blocks and readings with it, so records carry plant time and every feature computed from
  record timestamps (time in state, availability, interval statistics) comes out right at any speed.

One clock per `HalContext` (`context.clock`); the plant made for the context shares it. No global state.
"""

from __future__ import annotations

import threading
import time


class RealClock:
    speed = 1.0

    def time_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()

    def __call__(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """`event.wait` for `seconds` of clock time; True if the event is set."""
        return event.wait(max(seconds, 0.0))

    def __repr__(self) -> str:
        return "RealClock()"


REAL_CLOCK = RealClock()


class ScaledClock(RealClock):
    """Plant time at `speed` × real time (speed ≥ 1 for faster than real time; 0 < speed < 1 slows it down)."""

    def __init__(self, speed: float, start_ns: int | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"clock speed: expected a positive number, got {speed!r}")
        self.speed = float(speed)
        self._mono0 = time.monotonic()
        self._start_ns = time.time_ns() if start_ns is None else int(start_ns)

    def elapsed(self) -> float:
        """Clock seconds since the clock was made."""
        return (time.monotonic() - self._mono0) * self.speed

    def time_ns(self) -> int:
        return self._start_ns + int(self.elapsed() * 1e9)

    def monotonic(self) -> float:
        return self._mono0 + self.elapsed()

    def __call__(self) -> float:
        return self._mono0 + self.elapsed()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.speed)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(seconds, 0.0) / self.speed)

    def __repr__(self) -> str:
        return f"ScaledClock(speed={self.speed:g})"


def clock_for(speed: float | None) -> RealClock:
    """The real clock for speed None or 1, else a scaled clock."""
    return REAL_CLOCK if speed in (None, 1, 1.0) else ScaledClock(float(speed))


__all__ = ["RealClock", "ScaledClock", "REAL_CLOCK", "clock_for"]
