"""Fixtures of the hardware-layer tests: real parts (pymodbus servers, ptys, MockFactory), fake time only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hal.sources import HalContext


class FakeClock:
    """Monotonic seconds that only move when told to; `sleep` advances them (drivers take it from the bus)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 0.0)

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_context() -> Iterator[object]:
    made: list[HalContext] = []

    def make(buses: dict | None = None, emulate: bool = True, plant: object = None) -> HalContext:
        ctx = HalContext(emulate=emulate, buses=buses or {}, plant=plant)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()
