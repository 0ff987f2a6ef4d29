"""Slots of a feature row written by `kernels.analyze_window` (pure Python constants, no Numba).

A row holds the scalar features at fixed slots, then the band energies (one per configured band), then the
top-N spectral peaks as (Hz, amplitude) pairs: `row_length(n_bands, n_peaks)` slots in all.
"""

from __future__ import annotations

MEAN, RMS, PEAK, P2P, CREST, SKEWNESS, KURTOSIS, SHAPE, IMPULSE, CLEARANCE = range(10)
DOMINANT_HZ = 10
VELOCITY_RMS = 11
ENV_RMS, ENV_PEAK_HZ, BPFO, BPFI, BSF, FTF, BPFI_SB, ENV_LO_HZ, ENV_HI_HZ = range(12, 21)
SK_MAX, SK_MAX_HZ = 21, 22
BANDS0 = 23

TIME_NAMES = ("mean", "rms", "peak", "p2p", "crest", "skewness", "kurtosis", "shape", "impulse", "clearance")
ENVELOPE_NAMES = ("env_rms", "env_peak_hz", "bpfo", "bpfi", "bsf", "ftf", "bpfi_sb")
SCALAR_NAMES = TIME_NAMES + ("dominant_hz", "velocity_rms") + ENVELOPE_NAMES + ("env_lo_hz", "env_hi_hz",
                                                                               "sk_max", "sk_max_hz")
assert len(SCALAR_NAMES) == BANDS0


def row_length(n_bands: int, n_peaks: int) -> int:
    return BANDS0 + n_bands + 2 * n_peaks
