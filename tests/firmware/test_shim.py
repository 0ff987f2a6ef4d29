"""The MicroPython shim behaves as the firmware expects of the rp2 port (time.ticks_*, Timer, ADC scaling)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hal.emulated.micropython.shim import TICKS_PERIOD, AnalogFrontEnd, Board
from hal.emulated.plant import Plant


@pytest.fixture
def mods() -> dict:
    board = Board(AnalogFrontEnd(Plant(seed=5)), b"\x01" * 8, link=None)
    yield board.modules()
    board.stop_timers()


def test_ticks_arithmetic_matches_micropython(mods: dict) -> None:
    """The invariants of MicroPython's own tests/extmod/ticks_diff.py, for a 2**30 tick period."""
    t = mods["time"]
    mx = t.ticks_add(0, -1)
    half = mx // 2 + 1
    assert mx == TICKS_PERIOD - 1
    assert t.ticks_diff(1, 0) == 1 and t.ticks_diff(0, 1) == -1
    assert t.ticks_diff(0, mx) == 1 and t.ticks_diff(mx, 0) == -1
    assert t.ticks_diff(0, mx - 1) == 2
    assert t.ticks_diff(half, 1) == half - 1
    assert t.ticks_diff(half, 0) == -half
    assert 0 <= t.ticks_us() <= mx and 0 <= t.ticks_ms() <= mx


def test_timer_ticks_are_exactly_one_period_apart(mods: dict) -> None:
    t, machine = mods["time"], mods["machine"]
    seen: list[int] = []
    done = threading.Event()

    def cb(_timer: object) -> None:
        seen.append(t.ticks_us())
        if len(seen) == 200:
            done.set()

    tim = machine.Timer(-1)
    tim.init(mode=machine.Timer.PERIODIC, freq=4000, callback=cb, hard=True)
    assert done.wait(30)
    tim.deinit()
    steps = np.diff(np.array(seen[:200], dtype=np.int64)) % TICKS_PERIOD
    assert set(steps.tolist()) <= {249, 250, 251}  # 250 µs, truncated to whole µs as ticks_us() is
    assert abs(steps.mean() - 250) < 0.01


def test_adc_reads_the_plant_on_the_rp2_scale(mods: dict) -> None:
    adc = mods["machine"].ADC(26)  # Pin number 26 is ADC0
    values = [adc.read_u16() for _ in range(50)]
    assert all(v & 0xF == (v >> 12) & 0xF for v in values)  # 12-bit value shifted up, top nibble repeated
    accel = ((np.array(values) >> 4) * 3.3 / 4096 - 1.65) / 0.010
    assert np.abs(accel).max() < 5.0  # the plant's few m/s²
    temp = mods["machine"].ADC(4).read_u16()
    assert 0.5 < temp * 3.3 / 65536 < 0.8  # the RP2040 temperature sensor's ~0.7 V
    with pytest.raises(ValueError):
        mods["machine"].ADC(7)


def test_watchdog_timeout_range_is_the_rp2040s(mods: dict) -> None:
    with pytest.raises(ValueError):
        mods["machine"].WDT(timeout=9000)
