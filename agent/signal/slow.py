"""Slow-signal computations: interval statistics, report by exception, counter deltas, machine state and an
online (Welford) baseline with z-score anomalies.

Pure computation on scalars with explicit timestamps (ns): no clocks, no I/O, no threads, no Numba. The
per-sensor wiring (which record goes to which stream, when `tick` reports) lives in `agent.processing`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

STATES = ("off", "idle", "running")
NS = 1_000_000_000


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class IntervalStats:
    """min / max / mean / std (population) / count / last of the numeric values of one interval."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.bad = 0
        self._mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.last: float | None = None

    def add(self, value: float) -> None:
        v = float(value)
        self.count += 1
        d = v - self._mean
        self._mean += d / self.count
        self._m2 += d * (v - self._mean)
        self.min = min(self.min, v)
        self.max = max(self.max, v)
        self.last = v

    def summary(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0, "bad": self.bad, "min": None, "max": None, "mean": None, "std": None, "last": None}
        return {"count": self.count, "bad": self.bad, "min": self.min, "max": self.max, "mean": self._mean,
                "std": math.sqrt(self._m2 / self.count), "last": self.last}


class Deadband:
    """Report by exception: publish a value when it moved more than the deadband from the last published one,
    when its quality changed, or when `heartbeat_s` has passed since the last publication (maximum silence).

    `absolute` is in the value's unit; `percent` is relative to the last published value (with a last value
    of 0 any change counts). Non-numeric values are published when they change.
    """

    def __init__(self, absolute: float = 0.0, percent: float = 0.0, heartbeat_s: float = 0.0) -> None:
        self.absolute = float(absolute)
        self.percent = float(percent)
        self.heartbeat_ns = int(heartbeat_s * NS)
        self.last_value: Any = None
        self.last_quality: Any = None
        self.last_ts_ns: int | None = None

    def _moved(self, value: Any) -> bool:
        last = self.last_value
        if is_number(value) and is_number(last):
            limit = self.absolute if self.absolute else self.percent / 100.0 * abs(last)
            return abs(value - last) > limit
        return value != last

    def offer(self, ts_ns: int, value: Any, quality: Any) -> bool:
        """True when this reading is to be published (and then it counts as the last published one)."""
        publish = (self.last_ts_ns is None or quality != self.last_quality or self._moved(value)
                   or (self.heartbeat_ns > 0 and ts_ns - self.last_ts_ns >= self.heartbeat_ns))
        if publish:
            self.mark(ts_ns, value, quality)
        return publish

    def mark(self, ts_ns: int, value: Any, quality: Any) -> None:
        self.last_value, self.last_quality, self.last_ts_ns = value, quality, ts_ns

    def silent_too_long(self, now_ns: int) -> bool:
        return (self.heartbeat_ns > 0 and self.last_ts_ns is not None
                and now_ns - self.last_ts_ns >= self.heartbeat_ns)


class Counter:
    """Deltas of a monotonic counter. With `rollover` (the counter's modulus, e.g. 65536 for 16 bits) a decrease
    is a wrap-around; without it a decrease is a reset to zero (the counter restarted), so the delta is the new
    value. `total` is the increase since the first reading."""

    def __init__(self, rollover: int = 0) -> None:
        self.rollover = int(rollover)
        self.last: int | float | None = None
        self.total: int | float = 0
        self.resets = 0

    def update(self, value: int | float) -> int | float | None:
        """The increase since the previous reading (None for the first reading)."""
        last, self.last = self.last, value
        if last is None:
            return None
        if value >= last:
            delta = value - last
        elif self.rollover and last < self.rollover:
            delta = value + self.rollover - last
        else:
            delta = value
            self.resets += 1
        self.total += delta
        return delta


@dataclass(frozen=True)
class Transition:
    state: str
    previous: str | None
    since_ns: int  # when the new state began (the first observation in it, before any dwell time)
    value: float
    previous_s: float | None  # how long the previous state lasted


class MachineState:
    """off / idle / running from a level (motor current, vibration RMS), with hysteresis and minimum dwell.

    Bands: off below `off_below`, running at or above `running_above`, idle between. To leave a state the value
    must be beyond that state's band by more than `hysteresis`. A new state must persist for `min_dwell_s`
    before it is reported; it is then dated from its first observation, and time in each state is counted up
    to the last settled observation (a state still waiting out its dwell is not counted yet).
    """

    def __init__(self, off_below: float, running_above: float, hysteresis: float = 0.0,
                 min_dwell_s: float = 0.0) -> None:
        if not off_below < running_above:
            raise ValueError(f"expected off_below < running_above, got {off_below} and {running_above}")
        self.off_below = float(off_below)
        self.running_above = float(running_above)
        self.hysteresis = float(hysteresis)
        self.min_dwell_ns = int(min_dwell_s * NS)
        self.state: str | None = None
        self._since = 0
        self._last = 0
        self._pending: tuple[str, int] | None = None
        self._done = dict.fromkeys(STATES, 0)

    def _band(self, v: float) -> str:
        return "off" if v < self.off_below else ("idle" if v < self.running_above else "running")

    def classify(self, v: float) -> str:
        """The state `v` indicates, given the current state and the hysteresis."""
        base = self._band(v)
        s = self.state
        if s is None or base == s:
            return base
        lo, hi = {"off": (-math.inf, self.off_below), "idle": (self.off_below, self.running_above),
                  "running": (self.running_above, math.inf)}[s]
        h = self.hysteresis
        return s if lo - h <= v < hi + h else base

    def observe(self, ts_ns: int, value: float) -> Transition | None:
        if self.state is None:
            self.state, self._since, self._last = self._band(value), ts_ns, ts_ns
            return Transition(self.state, None, ts_ns, value, None)
        self._last = max(self._last, ts_ns)
        c = self.classify(value)
        if c == self.state:
            self._pending = None
            return None
        if self._pending is None or self._pending[0] != c:
            self._pending = (c, ts_ns)
        start = self._pending[1]
        if ts_ns - start < self.min_dwell_ns:
            return None
        previous, lasted = self.state, start - self._since
        self._done[previous] += lasted
        self.state, self._since, self._pending = c, start, None
        return Transition(c, previous, start, value, lasted / NS)

    def totals_ns(self) -> dict[str, int]:
        """Settled time in each state since the first observation, ns."""
        out = dict(self._done)
        if self.state is not None:
            settled = self._pending[1] if self._pending else self._last
            out[self.state] += max(0, settled - self._since)
        return out


class Baseline:
    """Welford's online mean and variance of one feature."""

    __slots__ = ("n", "mean", "_m2")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0

    def add(self, v: float) -> None:
        self.n += 1
        d = v - self.mean
        self.mean += d / self.n
        self._m2 += d * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / (self.n - 1)) if self.n > 1 else 0.0


class AnomalyDetector:
    """Per-feature baselines; an event when a feature's |z| reaches `z` and again when it falls below 3/4 of `z`.

    The first `warmup` values of a feature only teach the baseline. Anomalous values do not update it unless
    `adapt` is set, so a lasting change stays visible instead of becoming the new normal.
    """

    def __init__(self, z: float = 4.0, warmup: int = 30, adapt: bool = False) -> None:
        self.z = float(z)
        self.warmup = int(warmup)
        self.adapt = adapt
        self.baselines: dict[str, Baseline] = {}
        self.active: set[str] = set()

    def observe(self, key: str, value: float) -> dict[str, Any] | None:
        """Learn `value`; return an event payload when `key` enters or leaves the anomalous state."""
        if not (is_number(value) and math.isfinite(value)):
            return None
        b = self.baselines.setdefault(key, Baseline())
        event = None
        anomalous = False
        if b.n >= self.warmup:
            std = b.std
            z = (value - b.mean) / std if std > 0 else (0.0 if value == b.mean else math.copysign(math.inf,
                                                                                                value - b.mean))
            # hysteresis: an active anomaly clears only below 3/4 of the threshold, so a value hovering at the
            # threshold does not flood the events stream
            anomalous = abs(z) >= (self.z * 0.75 if key in self.active else self.z)
            info = {"feature": key, "value": value, "z": z if math.isfinite(z) else None, "mean": b.mean,
                    "std": std, "n": b.n}
            if anomalous and key not in self.active:
                self.active.add(key)
                event = {"event": "anomaly", **info}
            elif not anomalous and key in self.active:
                self.active.discard(key)
                event = {"event": "anomaly_cleared", **info}
        if not anomalous or self.adapt:
            b.add(float(value))
        return event
