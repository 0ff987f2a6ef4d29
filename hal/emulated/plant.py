"""The emulated plant: one motor-driven machine whose physical signals feed every emulated sensor.

Signals are functions of time (seconds since the plant's epoch), so several sensors sampling the same plant see
one consistent machine. This is the thin first version: a machine running at constant speed with imbalance,
misalignment and broadband noise, and a bearing temperature that follows a slow cycle.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np


class Plant:
    def __init__(self, shaft_hz: float = 24.75, imbalance_ms2: float = 2.0, misalignment_ms2: float = 0.6,
                 noise_ms2: float = 0.3, ambient_c: float = 22.0, seed: int | None = None) -> None:
        self.shaft_hz = shaft_hz
        self.imbalance_ms2 = imbalance_ms2
        self.misalignment_ms2 = misalignment_ms2
        self.noise_ms2 = noise_ms2
        self.ambient_c = ambient_c
        self.epoch_ns = time.time_ns()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def t(self, ts_ns: int) -> float:
        """Plant time in seconds for a wall-clock timestamp."""
        return (ts_ns - self.epoch_ns) / 1e9

    def vibration(self, t: np.ndarray, axis: int = 0) -> np.ndarray:
        """Acceleration in m/s² at plant times `t` (s) on one axis: 1× imbalance, 2× misalignment, noise."""
        w = 2 * math.pi * self.shaft_hz
        phase = axis * math.pi / 2  # the radial axes see the imbalance in quadrature
        with self._lock:
            noise = self._rng.normal(0.0, self.noise_ms2, size=t.shape)
        return (self.imbalance_ms2 * np.sin(w * t + phase)
                + self.misalignment_ms2 * np.sin(2 * w * t + 0.3 + phase) + noise)

    def bearing_temperature(self, t: float) -> float:
        """Bearing temperature in °C: ambient plus a load-dependent rise with a slow 10-minute swing."""
        return self.ambient_c + 18.0 + 1.5 * math.sin(2 * math.pi * t / 600.0)
