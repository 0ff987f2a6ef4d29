"""Per-sensor processing: turns what a source delivers into records (`Emit`s) for the outbox.

* Stream sensors: blocks → windows (`agent.windows`) → feature kernels (`agent.signal`) → one `features`
  record per window on stream `<sensor>`.
* Slow sensors: every reading → one `reading` record on stream `<channel>`.

A processor is plain, single-threaded code called by the pipeline's processing thread; it does no I/O.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from agent.config import SensorConfig
from agent.records import Emit
from agent.signal import rms_peak
from agent.windows import Windower
from hal.types import Block, Reading


class Processor(Protocol):
    def on_block(self, block: Block) -> list[Emit]: ...
    def on_reading(self, reading: Reading) -> list[Emit]: ...
    def tick(self, now_ns: int) -> list[Emit]: ...


class StreamFeatures:
    """Windows a high-rate sensor and computes its features per window and axis."""

    def __init__(self, sensor: SensorConfig) -> None:
        self.sensor = sensor
        self.windower = Windower(sensor.window, sensor.hop)

    def on_block(self, block: Block) -> list[Emit]:
        out: list[Emit] = []
        for w in self.windower.push(block):
            features: dict[str, Any] = {}
            for k, axis in enumerate(block.axes):
                rms, peak = rms_peak(w.samples[:, k])
                features[axis] = {"rms": float(rms), "peak": float(peak)}
            payload: dict[str, Any] = {"unit": block.unit, "rate_hz": w.rate_hz, "n": int(w.samples.shape[0]),
                                       "features": features}
            if w.gap_before:
                payload["gap_before"] = w.gap_before
            out.append(Emit("features", self.sensor.name, w.t0_ns, payload, w.quality))
        return out

    def on_reading(self, reading: Reading) -> list[Emit]:
        return []

    def tick(self, now_ns: int) -> list[Emit]:
        return []


class SlowReadings:
    """Publishes every reading of a slow sensor as a `reading` record."""

    def __init__(self, sensor: SensorConfig) -> None:
        self.sensor = sensor

    def on_block(self, block: Block) -> list[Emit]:
        return []

    def on_reading(self, reading: Reading) -> list[Emit]:
        value = reading.value
        if isinstance(value, (np.floating, np.integer)):
            value = value.item()
        payload: dict[str, Any] = {"value": value, "unit": reading.unit}
        if reading.error:
            payload["error"] = reading.error
        return [Emit("reading", reading.channel, reading.ts_ns, payload, reading.quality)]

    def tick(self, now_ns: int) -> list[Emit]:
        return []


def make_processor(sensor: SensorConfig) -> Processor:
    return StreamFeatures(sensor) if sensor.kind == "stream" else SlowReadings(sensor)
