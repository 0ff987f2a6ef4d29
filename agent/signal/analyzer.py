"""The window analyser: turns validated `features` settings, a sample rate and a window length into the arrays
the kernel needs (a plan, built once), then computes and names the features of each window.

Pure computation: no I/O, no threads. Imports the Numba kernels, so `agent.signal.cache.configure_cache()`
must run before this module is imported in a service.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agent.signal import bearings, iso, layout
from agent.signal.kernels import analyze_window
from agent.signal.schema import validate_features
from agent.signal.spectrum import hann
from hal.types import STANDARD_GRAVITY

G = STANDARD_GRAVITY  # m/s² per g


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def _env_length(band_bins: int) -> int:
    """Inverse-FFT length of the envelope: a power of two holding the band (exactness) and about twice its
    width (so the envelope spectrum reaches the band width, the highest frequency an envelope of it carries)."""
    return _next_pow2(max(16, band_bins, 2 * (band_bins - 1)))


def bearing_geometry(value: str | Mapping[str, Any]) -> bearings.BearingGeometry | None:
    return bearings.geometry(value)


class Analyzer:
    """Features of fixed-length windows of one sensor. `features` is a `features` table (validated here)."""

    def __init__(self, features: Mapping[str, Any] | None, rate_hz: float, n: int) -> None:
        values, errors = validate_features("stream", features or {})
        if errors:
            raise ValueError("; ".join(f"features.{k}: {m}" if k else f"features: {m}" for k, m in errors))
        if n < 8:
            raise ValueError(f"expected a window of at least 8 samples, got {n}")
        self.settings = values
        self.rate_hz = float(rate_hz)
        self.n = int(n)
        nh = n // 2 + 1
        df = self.rate_hz / n
        self.df = df
        nyq = self.rate_hz / 2
        self.window = hann(n)
        self.sum_w = float(self.window.sum())
        self.sum_w2 = float((self.window * self.window).sum())

        self.bands_hz = [[float(lo), float(hi)] for lo, hi in values["bands"]]
        bins = [[min(nh, math.ceil(lo / df)), nh if hi >= nyq else min(nh, math.ceil(hi / df))]
                for lo, hi in self.bands_hz]
        self.band_bins = np.array(bins, dtype=np.int64).reshape(len(bins), 2)
        self.n_peaks = int(values["peaks"])

        self.velocity = bool(values["velocity"])
        self.vlo, self.vhi = 1, 0
        self.vel_w = np.zeros(0)
        if self.velocity:
            lo, hi = values["velocity_band"]
            self.vlo = max(1, math.ceil(lo / df))
            self.vhi = min(nh - 1, math.floor(hi / df))
            scale = G if values["accel_unit"] == "g" else 1.0
            f = np.arange(self.vlo, self.vhi + 1) * df
            self.vel_w = (1e3 * scale) ** 2 / (2 * np.pi * f) ** 2 if len(f) else np.zeros(0)
        self.zone_limits: tuple[float, float, float] | None = None
        if values["iso"]:
            self.zone_limits = iso.PRESETS[values["iso"]]
        elif values["zones"]:
            self.zone_limits = tuple(float(v) for v in values["zones"])  # type: ignore[assignment]

        self.bearing = bearing_geometry(values["bearing"])
        self.orders = self.bearing.orders() if self.bearing else None
        env = values["envelope"]
        self.envelope = bool(env)
        self.slip = float(env["slip"]) if env else 0.02
        self.env_mode, self.env_klo, self.env_khi, self.env_m, self.env_width_sk = 0, 0, -1, 16, 0
        sk_on = bool(values["sk"]) or (bool(env) and env["band"] == "auto")
        self.sk_nperseg = int(values["sk_nperseg"]) if sk_on and n >= values["sk_nperseg"] else 0
        self.sk_hop = int(values["sk_hop"] or self.sk_nperseg // 2) if self.sk_nperseg else 1
        self.sk_w = hann(self.sk_nperseg) if self.sk_nperseg else np.zeros(0)
        if env:
            if env["band"] == "auto":
                if self.sk_nperseg:
                    df_sk = self.rate_hz / self.sk_nperseg
                    width_hz = env["bandwidth_hz"] or self.rate_hz / 8
                    self.env_width_sk = max(1, min(self.sk_nperseg // 2 - 2, round(width_hz / df_sk)))
                    self.env_mode = 2
                    self.env_m = _env_length(math.ceil(self.env_width_sk * df_sk / df) + 1)
            else:
                lo, hi = env["band"]
                self.env_klo = max(1, math.ceil(lo / df))
                self.env_khi = min(nh - 2, math.floor(hi / df))
                if self.env_khi >= self.env_klo:
                    self.env_mode = 1
                    self.env_m = _env_length(self.env_khi - self.env_klo + 1)
        self.row_length = layout.row_length(len(self.bands_hz), self.n_peaks)
        self._out: np.ndarray | None = None

    def fault_hz(self, shaft_hz: float | None) -> np.ndarray:
        """[bpfo, bpfi, bsf, ftf, shaft] in Hz; zeros where unknown."""
        f = np.zeros(5)
        if shaft_hz and shaft_hz > 0:
            f[4] = shaft_hz
            if self.orders:
                f[:4] = [self.orders[k] * shaft_hz for k in bearings.FAULTS]
        return f

    def compute(self, samples: np.ndarray, shaft_hz: float | None = None, out: np.ndarray | None = None
                ) -> np.ndarray:
        """Feature rows (axes, slots) of one window (n,) or (n, axes). Returns `out` (a new array if None)."""
        x = np.ascontiguousarray(samples.reshape(samples.shape[0], -1), dtype=np.float64)
        if x.shape[0] != self.n:
            raise ValueError(f"expected a window of {self.n} samples, got {x.shape[0]}")
        if out is None:
            out = np.empty((x.shape[1], self.row_length))
        analyze_window(x, self.rate_hz, self.window, self.sum_w, self.sum_w2, self.band_bins, self.vlo, self.vhi,
                       self.vel_w, self.n_peaks, self.env_mode, self.env_klo, self.env_khi, self.env_m,
                       self.env_width_sk, self.fault_hz(shaft_hz), self.slip, self.sk_hop, self.sk_w, out)
        return out

    def named(self, row: np.ndarray, digits: int | None = 6) -> dict[str, Any]:
        """One axis's row as a dict of named features (only the configured ones); floats to `digits` significant
        digits (correctly rounded, so their JSON is short), NaN kept as NaN."""
        v = row.tolist()
        if digits:
            with np.errstate(divide="ignore", invalid="ignore"):
                places = (digits - 1 - np.floor(np.log10(np.abs(row)))).tolist()
            v = [round(x, int(d)) if d == d and abs(d) < 400 else x for x, d in zip(v, places)]
        d: dict[str, Any] = dict(zip(layout.TIME_NAMES, v))
        d["dominant_hz"] = v[layout.DOMINANT_HZ]
        if self.velocity:
            d["velocity_rms"] = v[layout.VELOCITY_RMS]
            if self.zone_limits:
                d["zone"] = iso.zone(float(row[layout.VELOCITY_RMS]), self.zone_limits)
        if self.sk_nperseg:
            d["sk_max"] = v[layout.SK_MAX]
            d["sk_max_hz"] = v[layout.SK_MAX_HZ]
        if self.envelope:
            d.update(zip(layout.ENVELOPE_NAMES, v[layout.ENV_RMS:layout.ENV_RMS + len(layout.ENVELOPE_NAMES)]))
            d["env_band_hz"] = [v[layout.ENV_LO_HZ], v[layout.ENV_HI_HZ]]
        nb = len(self.bands_hz)
        if nb:
            d["bands"] = v[layout.BANDS0:layout.BANDS0 + nb]
        if self.n_peaks:
            p0 = layout.BANDS0 + nb
            d["peaks"] = [[v[p0 + 2 * j], v[p0 + 2 * j + 1]] for j in range(self.n_peaks)
                          if math.isfinite(v[p0 + 2 * j])]
        return d

    def features(self, samples: np.ndarray, axes: Sequence[str] = ("x",), shaft_hz: float | None = None,
                 digits: int | None = 6) -> dict[str, dict[str, Any]]:
        """Named features per axis of one window."""
        out = self.compute(samples, shaft_hz, self._out if self._out is not None and self._out.shape[0] == len(axes)
                           else None)
        self._out = out
        return {axis: self.named(out[k], digits) for k, axis in enumerate(axes)}

    def context(self, shaft_hz: float | None) -> dict[str, Any]:
        """Window-level fields that describe the features: band edges, shaft speed and defect frequencies."""
        c: dict[str, Any] = {}
        if self.bands_hz:
            c["bands_hz"] = self.bands_hz
        if self.envelope and shaft_hz:
            c["shaft_hz"] = round(float(shaft_hz), 6)
            if self.orders:
                c["fault_hz"] = {k: round(self.orders[k] * shaft_hz, 4) for k in bearings.FAULTS}
        return c
