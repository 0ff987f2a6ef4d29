"""Windowing: turns a run of `Block`s into contiguous, possibly overlapping windows of fixed length.

A window never spans a gap: when a block reports lost samples (or a sample-time discontinuity), the partial
window is discarded and counted, and windowing restarts at that block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hal.types import Block, Quality


@dataclass(frozen=True, slots=True)
class Window:
    t0_ns: int
    rate_hz: float
    samples: np.ndarray  # (n, axes), float64, C-contiguous
    quality: Quality
    gap_before: int  # samples lost between the previous window's data and this one


class Windower:
    def __init__(self, size: int, hop: int) -> None:
        if size <= 0 or hop <= 0:
            raise ValueError("window size and hop must be positive")
        self.size = size
        self.hop = hop
        self._buf: np.ndarray | None = None  # (n, axes)
        self._t0_ns = 0
        self._rate = 0.0
        self._quality = Quality.GOOD
        self._next_expected_ns: int | None = None
        self._pending_gap = 0
        self._skip = 0  # samples still to drop when hop > size
        self.discarded_partial = 0  # partial windows thrown away at gaps

    def push(self, block: Block) -> list[Window]:
        samples = block.samples.reshape(len(block), -1).astype(np.float64, copy=False)
        discontinuous = (self._next_expected_ns is not None and self._rate == block.rate_hz
                         and abs(block.t0_ns - self._next_expected_ns) > 1.5e9 / block.rate_hz)
        lost = block.gap
        if discontinuous and not lost:
            lost = max(1, int(round((block.t0_ns - self._next_expected_ns) * block.rate_hz / 1e9)))
        if (lost or self._rate != block.rate_hz
                or (self._buf is not None and self._buf.shape[1] != samples.shape[1])):
            if self._buf is not None and len(self._buf):
                self.discarded_partial += 1
            self._buf = None
            self._skip = 0
            self._pending_gap += lost
        self._next_expected_ns = block.t0_ns + block.duration_ns
        self._rate = block.rate_hz
        if self._skip:
            drop = min(self._skip, len(samples))
            samples = samples[drop:]
            self._skip -= drop
            if not len(samples):
                return []
            block_t0 = block.t0_ns + int(round(drop * 1e9 / block.rate_hz))
        else:
            block_t0 = block.t0_ns
        if self._buf is None or not len(self._buf):
            self._buf = samples
            self._t0_ns = block_t0
            self._quality = block.quality
        else:
            self._buf = np.concatenate([self._buf, samples])
            self._quality = Quality.worst(self._quality, block.quality)
        out: list[Window] = []
        while len(self._buf) >= self.size:
            out.append(Window(self._t0_ns, self._rate, np.ascontiguousarray(self._buf[: self.size]), self._quality,
                              self._pending_gap))
            self._pending_gap = 0
            step = min(self.hop, len(self._buf))
            self._skip = self.hop - step
            self._buf = self._buf[step:]
            self._t0_ns += int(round(step * 1e9 / self._rate))
            if not len(self._buf):
                break
            self._quality = block.quality
        return out
