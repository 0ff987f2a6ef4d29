"""Windowing: contiguous windows of fixed size with hop, never spanning a gap."""

from __future__ import annotations

import numpy as np
import pytest

from agent.windows import Windower
from hal.types import Block, Quality


def blocks(n_blocks: int, size: int, rate: float = 100.0, start: int = 0, t0: int = 0, gap_at: int | None = None):
    i = start
    for b in range(n_blocks):
        gap = 0
        if gap_at is not None and b == gap_at:
            i += 7
            gap = 7
        yield Block("c", t0 + int(round(i * 1e9 / rate)), rate, np.arange(i, i + size, dtype=np.float64),
                    gap=gap)
        i += size


@pytest.mark.parametrize("size,hop", [(10, 10), (10, 5), (10, 3), (10, 25), (16, 16)])
def test_windows_are_contiguous_with_hop(size: int, hop: int) -> None:
    w = Windower(size, hop)
    out = [win for b in blocks(40, 7) for win in w.push(b)]
    assert out
    for k, win in enumerate(out):
        first = k * hop
        assert win.samples[:, 0].tolist() == list(range(first, first + size))
        assert win.t0_ns == int(round(first * 1e9 / 100.0))
        assert win.gap_before == 0
    assert len(out) == (40 * 7 - size) // hop + 1


def test_a_gap_discards_the_partial_window_and_is_reported() -> None:
    w = Windower(10, 10)
    out = [win for b in blocks(10, 6, gap_at=3) for win in w.push(b)]
    # blocks 0-2: samples 0..17 → window 0..9; 10..17 is partial and discarded; restart at the gap (25)
    assert out[0].samples[:, 0].tolist() == list(range(10))
    assert out[1].samples[:, 0].tolist() == list(range(25, 35))
    assert out[1].gap_before == 7 and out[0].gap_before == 0
    assert w.discarded_partial == 1


def test_time_discontinuity_counts_as_a_gap() -> None:
    w = Windower(4, 4)
    b1 = Block("c", 0, 100.0, np.zeros(4))
    b2 = Block("c", int(1e9), 100.0, np.ones(4))  # 1 s later but should be at 40 ms
    assert w.push(b1)[0].gap_before == 0
    assert w.push(b2)[0].gap_before == 96


def test_quality_of_a_window_is_the_worst_of_its_blocks() -> None:
    w = Windower(8, 8)
    w.push(Block("c", 0, 100.0, np.zeros(4)))
    (win,) = w.push(Block("c", 40_000_000, 100.0, np.zeros(4), quality=Quality.UNCERTAIN))
    assert win.quality is Quality.UNCERTAIN


def test_multi_axis_blocks() -> None:
    w = Windower(4, 2)
    out = w.push(Block("c", 0, 10.0, np.arange(12.0).reshape(6, 2), axes=("x", "y")))
    assert [o.samples.shape for o in out] == [(4, 2), (4, 2)]
    assert out[1].samples[0].tolist() == [4.0, 5.0]
