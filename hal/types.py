"""Core values that leave the hardware layer: `Reading` (one slow value) and `Block` (high-rate samples).

A bad read is a value with quality `bad`, not an exception that kills a reader thread.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

STANDARD_GRAVITY = 9.80665  # m/s² per g (standard acceleration of gravity, exact by definition)


class Quality(str, enum.Enum):
    """OPC UA's three quality classes."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"

    def __str__(self) -> str:  # "good", not "Quality.GOOD"
        return self.value

    @staticmethod
    def worst(*qualities: "Quality") -> "Quality":
        order = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
        return max(qualities, key=order.__getitem__, default=Quality.GOOD)


def now_ns() -> int:
    """Wall-clock time, ns since the Unix epoch (UTC)."""
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class Reading:
    """One slow value of one channel.

    `value` is None when the read failed (quality `bad`); `error` then says why.
    """

    channel: str
    ts_ns: int
    value: float | int | bool | str | None
    unit: str = ""
    quality: Quality = Quality.GOOD
    error: str | None = None

    @classmethod
    def bad(cls, channel: str, error: str, unit: str = "", ts_ns: int | None = None) -> "Reading":
        return cls(channel, now_ns() if ts_ns is None else ts_ns, None, unit, Quality.BAD, error)


@dataclass(frozen=True, slots=True)
class Block:
    """A contiguous run of high-rate samples of one channel.

    `samples` is 1-D (one axis) or 2-D with shape (n, axes). `gap` counts samples lost just before this block
    (FIFO overrun, lost serial frame), so a consumer never mistakes two runs for one.
    """

    channel: str
    t0_ns: int
    rate_hz: float
    samples: np.ndarray
    unit: str = ""
    quality: Quality = Quality.GOOD
    gap: int = 0
    axes: tuple[str, ...] = field(default=("x",))

    def __post_init__(self) -> None:
        if self.rate_hz <= 0:
            raise ValueError(f"Block {self.channel}: rate_hz must be positive, got {self.rate_hz}")
        if self.samples.ndim not in (1, 2):
            raise ValueError(f"Block {self.channel}: samples must be 1-D or 2-D, got shape {self.samples.shape}")

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_ns(self) -> int:
        return int(round(len(self) * 1e9 / self.rate_hz))
