"""The window and the amplitude spectrum every spectrum in edge-agent uses, in NumPy only (no Numba), so the
diagnostics (`edge-agent capture`) draw exactly what the feature kernels compute.

Pure computation: no I/O, no threads, no Numba import (cheap to import from a CLI command).
"""

from __future__ import annotations

import numpy as np


def hann(n: int) -> np.ndarray:
    """The periodic Hann window (scipy.signal.get_window("hann", n)), the window of every spectrum here."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def amplitude_spectrum(x: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, single-sided amplitude spectrum) of the Hann-windowed, mean-removed signal: 2|Y_k|/Σw with
    Y = rfft(hann · (x − mean)), as the kernels define it (a sine of amplitude A shows as A)."""
    w = hann(len(x))
    spec = np.abs(np.fft.rfft((x - x.mean()) * w)) * 2.0 / w.sum()
    return np.fft.rfftfreq(len(x), 1.0 / rate), spec
