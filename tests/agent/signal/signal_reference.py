"""Plain float64 NumPy/SciPy references of every window feature, written straight from the definitions in
docs/signal.md with library calls wherever one exists (scipy.stats moments, scipy.signal.get_window, hilbert,
stft). The tests compare the Numba kernels against these; bench/bench_signal.py times them as "plain SciPy".
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.signal
import scipy.stats


def time_features(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    d = x - x.mean()
    rms = np.sqrt(np.mean(d ** 2))
    peak = np.max(np.abs(d))
    mabs = np.mean(np.abs(d))
    return {
        "mean": x.mean(),
        "rms": rms,
        "peak": peak,
        "p2p": np.ptp(x),
        "crest": peak / rms,
        "skewness": scipy.stats.skew(x),
        "kurtosis": scipy.stats.kurtosis(x, fisher=False),
        "shape": rms / mabs,
        "impulse": peak / mabs,
        "clearance": peak / np.mean(np.sqrt(np.abs(d))) ** 2,
    }


def spectrum(x: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(frequencies, Y = rfft(hann·(x−mean)), per-bin mean square P, amplitude spectrum A)."""
    n = len(x)
    w = scipy.signal.get_window("hann", n)
    y = scipy.fft.rfft(w * (x - x.mean()))
    c = np.full(len(y), 2.0)
    c[0] = 1.0
    if n % 2 == 0:
        c[-1] = 1.0
    p = c * np.abs(y) ** 2 / (n * np.sum(w ** 2))
    a = 2 * np.abs(y) / np.sum(w)
    return scipy.fft.rfftfreq(n, 1 / rate), y, p, a


def band_energies(x: np.ndarray, rate: float, bands: list[list[float]]) -> np.ndarray:
    f, _, p, _ = spectrum(x, rate)
    nyq = rate / 2
    out = []
    for lo, hi in bands:
        sel = (f >= lo) & ((f < hi) | (hi >= nyq))
        out.append(np.var(x) * p[sel].sum() / p.sum())
    return np.array(out)


def velocity_rms_mm_s(x: np.ndarray, rate: float, lo: float = 10.0, hi: float = 1000.0) -> float:
    f, _, p, _ = spectrum(x, rate)
    sel = (f >= lo) & (f <= hi) & (f < rate / 2)
    return 1e3 * np.sqrt(np.sum(p[sel] / (2 * np.pi * f[sel]) ** 2))


def peaks(x: np.ndarray, rate: float, count: int) -> list[tuple[float, float]]:
    f, _, _, a = spectrum(x, rate)
    idx, _ = scipy.signal.find_peaks(a)  # local maxima; never DC or the last bin
    # (find_peaks takes a plateau by its middle, the kernel by its left edge: noise has no plateaus)
    order = sorted(idx, key=lambda k: -a[k])[:count]
    return [(f[k], a[k]) for k in order]


def envelope(x: np.ndarray, rate: float, lo_hz: float, hi_hz: float, m: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(envelope at every n/m-th sample, envelope-spectrum frequencies, amplitudes) via scipy.signal.hilbert.

    Band-pass the Hann-windowed, mean-removed window with an FFT brick wall (bins lo…hi inclusive), take the
    full-length Hilbert envelope, keep every n/m-th sample, and give its amplitude spectrum (Hann coherent gain).
    """
    n = len(x)
    w = scipy.signal.get_window("hann", n)
    y = scipy.fft.rfft(w * (x - x.mean()))
    df = rate / n
    k = np.arange(len(y))
    klo, khi = max(1, int(np.ceil(lo_hz / df))), min(len(y) - 2, int(np.floor(hi_hz / df)))
    yb = np.where((k >= klo) & (k <= khi), y, 0)
    xb = scipy.fft.irfft(yb, n)
    env = np.abs(scipy.signal.hilbert(xb))
    if m is not None:
        env = env[:: n // m]
    mm = len(env)
    amp = 2 * np.abs(scipy.fft.rfft(env)) / np.sum(scipy.signal.get_window("hann", mm))
    return env, np.arange(len(amp)) * df, amp


def spectral_kurtosis(x: np.ndarray, rate: float, nperseg: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Antoni's STFT estimator via scipy.signal.stft (Hann, no padding, no detrending)."""
    f, _, z = scipy.signal.stft(x - x.mean(), rate, window="hann", nperseg=nperseg, noverlap=nperseg - hop,
                                boundary=None, padded=False, detrend=False)
    p = np.abs(z) ** 2
    return f, np.mean(p ** 2, axis=1) / np.mean(p, axis=1) ** 2 - 2
