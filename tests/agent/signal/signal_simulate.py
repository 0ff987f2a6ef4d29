"""Reference signals with known answers: tones, square waves, noise and simulated rolling-bearing faults."""

from __future__ import annotations

import numpy as np


def tone(rate: float, n: int, hz: float, amp: float, phase: float = 0.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * hz * np.arange(n) / rate + phase)


def bearing_fault(rate: float, n: int, shaft_hz: float, fault_hz: float, *, resonance_hz: float = 3000.0,
                  decay_s: float = 0.0015, impulse: float = 3.0, shaft_amp: float = 1.0, noise: float = 0.5,
                  shaft_modulation: float = 0.0, seed: int = 1) -> np.ndarray:
    """Acceleration of a bearing with a local defect: an impulse every 1/fault_hz seconds (±1 % random slip)
    rings a decaying resonance; plus the shaft's 1× tone and white noise. `shaft_modulation` (0…1) modulates
    the impulse amplitude once per shaft turn, as for an inner-race defect passing through the load zone.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    x = shaft_amp * np.sin(2 * np.pi * shaft_hz * t) + rng.normal(0.0, noise, n)
    ring_n = int(10 * decay_s * rate)
    tr = np.arange(ring_n) / rate
    ring = np.exp(-tr / decay_s) * np.sin(2 * np.pi * resonance_hz * tr)
    period = 1.0 / fault_hz
    t_hit = 0.3 * period
    while t_hit < t[-1]:
        i0 = int(round(t_hit * rate))
        a = impulse * (1 + shaft_modulation * np.cos(2 * np.pi * shaft_hz * t_hit))
        seg = ring[: n - i0]
        x[i0:i0 + len(seg)] += a * seg
        t_hit += period * (1 + rng.uniform(-0.01, 0.01))
    return x
