"""hal.clock.ManualClock: virtual time that a test steps, with the threads sleeping on it kept in lock-step."""

from __future__ import annotations

import threading

import pytest

from hal.clock import ManualClock
from tests.agent_helpers import wait


def ticker(clock: ManualClock, period: float, n: int, log: list, name: str) -> threading.Thread:
    def run() -> None:
        for _ in range(n):
            clock.sleep(period)
            log.append((round(clock.monotonic() - 1000.0, 9), name))
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t


def test_threads_wake_exactly_at_their_deadlines_in_time_order() -> None:
    clock = ManualClock()
    log: list = []
    a = ticker(clock, 0.3, 5, log, "a")
    b = ticker(clock, 0.5, 3, log, "b")
    assert wait(lambda: clock.parked() == 2)  # both are waiting before time moves
    clock.advance(1.0)
    assert log == [(0.3, "a"), (0.5, "b"), (0.6, "a"), (0.9, "a"), (1.0, "b")]
    assert clock.monotonic() == pytest.approx(1001.0)
    clock.sleep(1.0)  # the driver's own sleep moves time too
    assert log[5:] == [(1.2, "a"), (1.5, "b"), (1.5, "a")] or log[5:] == [(1.2, "a"), (1.5, "a"), (1.5, "b")]
    a.join(5)
    b.join(5)
    assert not a.is_alive() and not b.is_alive()


def test_time_does_not_move_while_nobody_advances_it() -> None:
    clock = ManualClock()
    ns0 = clock.time_ns()
    done = threading.Event()
    t = threading.Thread(target=lambda: (clock.sleep(0.1), done.set()), daemon=True)
    t.start()
    assert wait(lambda: clock.parked() == 1)
    assert not done.wait(0.3) and clock.time_ns() == ns0  # real time passes, clock time does not
    clock.advance(0.1)
    assert done.is_set() and clock.time_ns() - ns0 == 100_000_000


def test_wait_returns_when_its_event_is_set() -> None:
    clock = ManualClock()
    ev = threading.Event()
    got: list = []
    t = threading.Thread(target=lambda: got.append(clock.wait(ev, 60.0)), daemon=True)
    t.start()
    assert wait(lambda: clock.parked() == 1)
    ev.set()
    t.join(10)
    assert got == [True] and clock.monotonic() == 1000.0


def test_a_woken_thread_that_never_parks_again_is_named() -> None:
    clock = ManualClock(settle_timeout_s=0.5)
    stuck = threading.Event()

    def run() -> None:
        clock.sleep(0.1)
        stuck.wait(30)  # blocked on something that is not the clock
    t = threading.Thread(target=run, name="stuck-reader", daemon=True)
    t.start()
    assert wait(lambda: clock.parked() == 1)
    with pytest.raises(TimeoutError, match="stuck-reader"):
        clock.advance(1.0)
    stuck.set()
