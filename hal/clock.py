"""Clocks: where the emulated plant, the emulated buses and the drivers on them take their time from.

A clock has `time_ns()` (wall time, ns since the Unix epoch), `monotonic()` (seconds), `sleep(s)` and
`wait(event, s)`; calling it returns `monotonic()`, so it can be handed wherever a `clock()` callable is expected
(`EmulatedI2CBus(clock=...)`, `EmulatedPinFactory`). Time spans given to `sleep` and `wait` are clock seconds.

* `RealClock` (`REAL_CLOCK`): the system clocks. Real hardware always runs on it.
* `ScaledClock(speed)`: plant time runs `speed` times faster than real time, from the moment it was made (its
  `time_ns()` starts at the real wall time then). `sleep(1.0)` at speed 10 sleeps 0.1 s. Emulated sources, chips
  and drivers stamp blocks and readings with it, so records carry plant time and every feature computed from
  record timestamps (time in state, availability, interval statistics) comes out right at any speed.

* `ManualClock()`: virtual time for tests. Time moves only when the thread that made it (the driver, normally
  the test) sleeps or waits on it, or calls `advance`; every other thread that sleeps or waits on it stays parked
  until the time it asked for. Time moves from one parked thread's deadline to the next, and before it moves on
  every thread woken at a deadline has run until it parked again (or ended): a thread can neither race ahead of
  nor lag behind plant time, however busy the machine is.

One clock per `HalContext` (`context.clock`); the plant made for the context shares it. No global state.
"""

from __future__ import annotations

import math
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


class ManualClock(RealClock):
    """Virtual time stepped by one driver thread (see the module docstring). Time is kept in whole nanoseconds, so
    `monotonic()` and `time_ns()` always agree and a sleep of any positive length moves time on. `settle_timeout_s`
    bounds how long a woken thread may take to park again before `advance` gives up with an error naming it (a
    bound on a hang, not on speed)."""

    def __init__(self, start: float = 1000.0, start_ns: int | None = None, settle_timeout_s: float = 300.0) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # the driver waits on it: a thread parked
        self._ns = 0  # clock nanoseconds since the clock was made
        self._mono0 = float(start)
        self._start_ns = time.time_ns() if start_ns is None else int(start_ns)
        # thread -> (the clock nanosecond it waits for, its own condition on the same lock): a step wakes only the
        # threads due then, not every parked one
        self._parked: dict[threading.Thread, tuple[int, threading.Condition]] = {}
        self._running: set[threading.Thread] = set()  # woken by the clock and not parked again yet
        self.driver = threading.current_thread()
        self.settle_timeout_s = settle_timeout_s

    @staticmethod
    def _span_ns(seconds: float) -> int:
        return max(1, math.ceil(seconds * 1e9)) if seconds > 0 else 0

    def time_ns(self) -> int:
        with self._lock:
            return self._start_ns + self._ns

    def monotonic(self) -> float:
        with self._lock:
            return self._mono0 + self._ns / 1e9

    def __call__(self) -> float:
        return self.monotonic()

    def parked(self) -> int:
        """Threads parked on the clock now (a test waits for its threads to park before it moves time)."""
        with self._lock:
            return len(self._parked)

    def sleep(self, seconds: float) -> None:
        if threading.current_thread() is self.driver:
            self.advance(seconds)
        else:
            self._park(None, seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        if threading.current_thread() is self.driver:
            self.advance(seconds)
            return event.is_set()
        return self._park(event, seconds)

    def _park(self, event: threading.Event | None, seconds: float) -> bool:
        me = threading.current_thread()
        mine = threading.Condition(self._lock)
        with self._lock:
            deadline = self._ns + self._span_ns(seconds)
            self._parked[me] = (deadline, mine)
            self._running.discard(me)
            self._cond.notify()  # an advance may be waiting for this thread to park
            try:
                while self._ns < deadline and not (event is not None and event.is_set()):
                    mine.wait(0.05)  # an event is set without notifying the clock: look again soon
            finally:
                del self._parked[me]
                self._running.add(me)
        return event.is_set() if event is not None else True

    def _wake_due(self) -> None:
        """(lock held) Wake the threads whose deadline has come."""
        for deadline, cond in self._parked.values():
            if deadline <= self._ns:
                cond.notify()

    def advance(self, seconds: float) -> None:
        """Move time `seconds` on, stopping at every parked thread's deadline on the way until it parked again."""
        with self._lock:
            target = self._ns + self._span_ns(seconds)
            while True:
                self._settle()
                due = [d for d, _ in self._parked.values() if d <= target]
                if not due:
                    break
                self._ns = max(self._ns, min(due))
                self._wake_due()
            self._ns = target
            self._wake_due()
            self._settle()

    def _settle(self) -> None:
        """(lock held) Wait until every thread the clock woke has parked again or ended."""
        deadline = time.monotonic() + self.settle_timeout_s
        while True:
            self._running = {t for t in self._running if t.is_alive() and t not in self._parked}
            woken = [t for t, (d, _) in self._parked.items() if d <= self._ns]  # due, not yet out of their wait
            if not self._running and not woken:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"ManualClock: {', '.join(t.name for t in self._running | set(woken))} did not "
                                   f"park again within {self.settle_timeout_s:g} s (blocked on something else?)")
            self._cond.wait(0.01)

    def __repr__(self) -> str:
        return f"ManualClock(t={self._mono0 + self._ns / 1e9:.9f})"


def clock_for(speed: float | None) -> RealClock:
    """The real clock for speed None or 1, else a scaled clock."""
    return REAL_CLOCK if speed in (None, 1, 1.0) else ScaledClock(float(speed))


__all__ = ["RealClock", "ScaledClock", "ManualClock", "REAL_CLOCK", "clock_for"]
