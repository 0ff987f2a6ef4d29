"""The signal core: pure computation on arrays (no I/O, no threads, no config parsing).

Kernels are Numba-compiled with `cache=True, nogil=True` and accumulate in float64.

Importing this package does not import Numba: the settings schema (`agent.signal.schema`), the bearing and ISO
tables and the cache helper (`agent.signal.cache`) are plain Python, so `NUMBA_CACHE_DIR` can still be set by
`configure_cache()` before the first kernel module is imported. Kernels are imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["rms_peak"]


def __getattr__(name: str) -> Any:
    if name == "rms_peak":
        from agent.signal.kernels import rms_peak
        return rms_peak
    raise AttributeError(f"module 'agent.signal' has no attribute {name!r}")
