"""The signal core: pure computation on arrays (no I/O, no threads, no config parsing).

Kernels are Numba-compiled with `cache=True, nogil=True` and accumulate in float64.
"""

from agent.signal.kernels import rms_peak

__all__ = ["rms_peak"]
