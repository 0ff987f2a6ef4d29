"""Compile (or load from the cache) every kernel for the argument types of the hot path.

Run by `edge-agent warmup` at install time and as the service's start-up step: afterwards no kernel is compiled
on the publish path, and the first window only loads machine code from the cache. Every stream processor calls
`analyze_window` with one signature (see `agent.signal.kernels`), whatever its settings, so one call with every
feature switched on compiles all of it. Call `agent.signal.cache.configure_cache()` before importing this module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from agent.signal import kernels
from agent.signal.analyzer import Analyzer, hann

# A features table that switches on every code path of the window kernel.
EVERYTHING = {"bands": [[0, 100], [100, 1000], [1000, 1600]], "peaks": 5, "iso": "group2_rigid",
              "bearing": "6205", "shaft_hz": 24.75, "envelope": {"band": "auto"}, "sk": True}


@dataclass(frozen=True)
class Warmed:
    kernel: str
    seconds: float
    from_cache: bool  # loaded compiled code from the cache (False: compiled now, and saved)
    signatures: int


def _run(name: str, dispatcher, call) -> Warmed:  # type: ignore[no-untyped-def]
    hits = sum(dispatcher.stats.cache_hits.values())
    t = time.perf_counter()
    call()
    dt = time.perf_counter() - t
    return Warmed(name, dt, sum(dispatcher.stats.cache_hits.values()) > hits, len(dispatcher.signatures))


def warmup() -> list[Warmed]:
    """Make every kernel ready; returns what was done per kernel."""
    rng = np.random.default_rng(0)
    x3 = rng.normal(size=(1024, 3))
    an = Analyzer(EVERYTHING, 3200.0, 1024)
    an2 = Analyzer({"bearing": "6205", "envelope": {"band": [400, 1200]}}, 3200.0, 1024)
    spec = np.fft.rfft(an.window * x3[:, 0])
    done = [
        _run("analyze_window", kernels.analyze_window, lambda: (an.compute(x3, 24.75), an2.compute(x3[:, :1]))),
        _run("rms_peak", kernels.rms_peak, lambda: (kernels.rms_peak(x3[:, 0].copy()), kernels.rms_peak(x3[:, 0]))),
        _run("envelope_spectrum", kernels.envelope_spectrum,
             lambda: kernels.envelope_spectrum(spec, 100, 300, 512, 1024)),
        _run("spectral_kurtosis", kernels.spectral_kurtosis,
             lambda: kernels.spectral_kurtosis(x3[:, 0].copy(), hann(64), 32)),
    ]
    return done
