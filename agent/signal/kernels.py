"""Time-domain kernels (Numba, nogil, cached)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def rms_peak(x: np.ndarray) -> tuple[float, float]:
    """RMS and peak (max |x|) of a 1-D window, accumulated in float64. An empty window gives (nan, nan)."""
    n = x.shape[0]
    if n == 0:
        return np.nan, np.nan
    acc = 0.0
    peak = 0.0
    for i in range(n):
        v = np.float64(x[i])
        acc += v * v
        a = abs(v)
        if a > peak:
            peak = a
    return np.sqrt(acc / n), peak
