"""Feature kernels (Numba, nogil, cached, float64 accumulation). Pure array code: no I/O, no config.

`analyze_window` is the hot path: one call computes every configured feature of every axis of one window and
writes them into a preallocated row per axis (`out[axis, slot]`, slots in `agent.signal.layout`). It is compiled
for exactly one signature (float64 C-contiguous 2-D window, int64 and float64 scalars, float64/int64 arrays), so
`edge-agent warmup` can compile it once and a warmed install never compiles on the publish path. The FFTs run
inside the kernel through rocket-fft (pocketfft behind Numba's `np.fft`); bench/bench_signal.py measures the
alternative (FFT outside, in NumPy) in the same run.

Definitions (docs/signal.md has the full text):

* time domain on the window with its mean removed: rms, peak = max|x−mean|, p2p = max−min, crest = peak/rms,
  skewness = m3/m2^1.5, kurtosis = m4/m2² (Pearson: 3 for Gaussian noise), shape = rms/mean|x|,
  impulse = peak/mean|x|, clearance = peak/mean(√|x|)²;
* spectrum Y = rfft(hann · (x − mean)) with the periodic Hann window w; amplitude spectrum 2|Y_k|/Σw (the peak
  amplitude of a tone on bin k); per-bin mean square P_k = c_k|Y_k|²/(n·Σw²) (c_k = 2 except DC and Nyquist);
* band energy = variance · Σ_band P_k / Σ_all P_k, so bands that tile 0…Nyquist sum to the variance exactly;
* velocity RMS = sqrt(Σ_{f_lo ≤ f_k ≤ f_hi} P_k / (2π f_k)²), scaled to mm/s;
* envelope: the analytic signal of the band-passed, windowed window (2·Y_k on the band bins, zero elsewhere),
  shifted to base band and evaluated by an inverse FFT of length M (exactly the full-length Hilbert envelope at
  every n/M-th sample); its amplitude spectrum 4|E_k|/M has the bin spacing of the main spectrum;
* spectral kurtosis (Antoni): SK(f) = K·Σ|S_s(f)|⁴ / (Σ|S_s(f)|²)² − 2 over K Hann-windowed STFT segments.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit


def _prepare_numba() -> None:
    """Import rocket-fft and initialise Numba's CPU target without importing `scipy.fft` or `scipy.linalg`.

    When SciPy is installed, rocket-fft registers `scipy.fft` overloads and Numba's target set-up imports
    `scipy.linalg` (BLAS for `np.dot`); together that is about 60 MB of RSS and most of a second at start-up, for
    code these kernels never use (they use `np.fft` only). Both packages are hidden while this runs, unless
    something imported them already (the tests do). Numba's extension hook then finds rocket-fft imported, and
    the first kernel call finds the target ready. (Numba itself imports only the light top-level `scipy`
    package, to check its version.)
    """
    if "rocket_fft" in sys.modules:
        return
    hidden = [m for m in ("scipy.fft", "scipy.linalg") if m not in sys.modules]
    for m in hidden:
        sys.modules[m] = None  # type: ignore[assignment]  # `import m` now raises ImportError
    try:
        import rocket_fft  # noqa: F401
        from numba.core.registry import cpu_target

        cpu_target.target_context.refresh()
        cpu_target.typing_context.refresh()
    finally:
        for m in hidden:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]


_prepare_numba()

from agent.signal.layout import (
    BANDS0, BPFI_SB, BPFO, CLEARANCE, CREST, DOMINANT_HZ, ENV_HI_HZ, ENV_LO_HZ, ENV_PEAK_HZ, ENV_RMS,
    IMPULSE, KURTOSIS, MEAN, P2P, PEAK, RMS, SHAPE, SK_MAX, SK_MAX_HZ, SKEWNESS, VELOCITY_RMS,
)

# reassociation and contraction let LLVM vectorise the reductions; NaN and infinity semantics are kept (no
# "nnan"/"ninf"), so a bad window still yields NaN features, not garbage.
_OPTS = dict(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp"})


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


@njit(**_OPTS)
def _time_features(x, row):
    """Time-domain features of contiguous `x` into `row`; returns the mean (two passes: mean, then moments).

    Branch-free loops so that LLVM vectorises them; peak = max|x − mean| = max(max − mean, mean − min).
    """
    n = x.shape[0]
    s = 0.0
    lo = np.inf
    hi = -np.inf
    for i in range(n):
        v = x[i]
        s += v
        lo = min(lo, v)
        hi = max(hi, v)
    mean = s / n
    s1 = 0.0
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    sabs = 0.0
    ssqrt = 0.0
    for i in range(n):
        d = x[i] - mean
        d2 = d * d
        s1 += d
        m2 += d2
        m3 += d2 * d
        m4 += d2 * d2
        a = abs(d)
        sabs += a
        ssqrt += np.sqrt(a)
    # corrected two-pass: shift the moments by the rounding error c of the first-pass mean, which matters when
    # the offset is large against the fluctuation (a MEMS axis carrying 1 g)
    c = s1 / n
    m2 /= n
    m3 /= n
    m4 /= n
    m4 = m4 - 4.0 * c * m3 + 6.0 * c * c * m2 - 3.0 * c * c * c * c
    m3 = m3 - 3.0 * c * m2 + 2.0 * c * c * c
    m2 = m2 - c * c
    mean += c
    peak = max(hi - mean, mean - lo)
    mabs = sabs / n
    msqrt = ssqrt / n
    rms = np.sqrt(m2)
    row[MEAN] = mean
    row[RMS] = rms
    row[PEAK] = peak
    row[P2P] = hi - lo
    row[CREST] = peak / rms
    row[SKEWNESS] = m3 / (m2 * rms)
    row[KURTOSIS] = m4 / (m2 * m2)
    row[SHAPE] = rms / mabs
    row[IMPULSE] = peak / mabs
    row[CLEARANCE] = peak / (msqrt * msqrt)
    return mean


@njit(**_OPTS)
def spectral_kurtosis(xd, sk_w, hop):
    """Antoni's STFT estimator of the spectral kurtosis of `xd`: one value per bin of an nperseg-point rfft."""
    nps = sk_w.shape[0]
    k = (xd.shape[0] - nps) // hop + 1
    segs = np.empty((k, nps))
    for s in range(k):
        o = s * hop
        for i in range(nps):
            segs[s, i] = xd[o + i] * sk_w[i]
    spec = np.fft.rfft(segs, axis=1)
    nf = nps // 2 + 1
    sk = np.empty(nf)
    for f in range(nf):
        s2 = 0.0
        s4 = 0.0
        for s in range(k):
            c = spec[s, f]
            p = c.real * c.real + c.imag * c.imag
            s2 += p
            s4 += p * p
        sk[f] = k * s4 / (s2 * s2) - 2.0
    return sk


@njit(**_OPTS)
def envelope_spectrum(y_spec, klo, khi, m, n):
    """Envelope (length m, at every n/m-th sample) and its amplitude spectrum (m//2+1 bins of rate/n Hz).

    `y_spec` is rfft(hann · (x − mean)) of the n-sample window; the band is bins klo…khi inclusive (klo ≥ 1), at
    most m bins.
    """
    zb = np.zeros(m, dtype=np.complex128)
    nb = min(khi - klo + 1, m, y_spec.shape[0] - klo)  # a band wider than m bins is cut at m
    for j in range(nb):
        zb[j] = 2.0 * y_spec[klo + j]
    z = np.fft.ifft(zb)
    scale = m / n
    env = np.empty(m)
    for i in range(m):
        c = z[i]
        env[i] = scale * np.sqrt(c.real * c.real + c.imag * c.imag)
    e_spec = np.fft.rfft(env)
    amp = np.empty(e_spec.shape[0])
    for k in range(amp.shape[0]):
        c = e_spec[k]
        amp[k] = 4.0 * np.sqrt(c.real * c.real + c.imag * c.imag) / m
    return env, amp


@njit(**_OPTS)
def _max_near(amp, f_hz, tol_hz, df):
    """Largest amplitude within ±tol_hz of f_hz (bins from 2 upwards); NaN when out of range."""
    if not f_hz > 0.0:
        return np.nan
    k0 = int(np.ceil((f_hz - tol_hz) / df))
    k1 = int(np.floor((f_hz + tol_hz) / df))
    if k0 < 2:
        k0 = 2
    if k1 > amp.shape[0] - 1:
        k1 = amp.shape[0] - 1
    best = np.nan
    for k in range(k0, k1 + 1):
        if not amp[k] <= best:
            best = amp[k]
    return best


@njit(**_OPTS)
def analyze_window(x, rate, w, sum_w, sum_w2, band_bins, vlo, vhi, vel_w, npk, env_mode, env_klo, env_khi,
                   env_m, env_width_sk, fault_hz, tol_frac, sk_hop, sk_w, out):
    """Every configured feature of every axis of window `x` (n, axes) into `out` (axes, slots).

    env_mode: 0 no envelope, 1 fixed band env_klo…env_khi (bins), 2 band of env_width_sk SK bins with the
    largest mean spectral kurtosis. sk_w: Hann window of the SK segments (length 0: no spectral kurtosis).
    fault_hz: [bpfo, bpfi, bsf, ftf, shaft] in Hz (0: unknown). Slots not computed are NaN.
    """
    n = x.shape[0]
    naxes = x.shape[1]
    nh = n // 2 + 1
    df = rate / n
    nb = band_bins.shape[0]
    nps = sk_w.shape[0]
    xd = np.empty(n)
    y = np.empty(n)
    p = np.empty(nh)
    amp = np.empty(nh)
    top_a = np.empty(npk)
    top_k = np.empty(npk, dtype=np.int64)
    p_scale = 2.0 / (n * sum_w2)
    a_scale = 2.0 / sum_w
    for a in range(naxes):
        row = out[a]
        row[:] = np.nan
        for i in range(n):
            xd[i] = x[i, a]
        mean = _time_features(xd, row)
        var = row[RMS] * row[RMS]
        for i in range(n):
            xd[i] -= mean
            y[i] = xd[i] * w[i]
        spec = np.fft.rfft(y)
        ptot = 0.0
        for k in range(nh):
            c = spec[k]
            m2 = c.real * c.real + c.imag * c.imag
            p[k] = m2 * p_scale
            ptot += p[k]
            amp[k] = np.sqrt(m2) * a_scale
        # DC and (n even) Nyquist have no mirror image: half weight
        ptot -= 0.5 * p[0]
        p[0] *= 0.5
        if n % 2 == 0:
            ptot -= 0.5 * p[nh - 1]
            p[nh - 1] *= 0.5
        # band energies: shares of the variance
        for b in range(nb):
            s = 0.0
            for k in range(band_bins[b, 0], band_bins[b, 1]):
                s += p[k]
            row[BANDS0 + b] = var * s / ptot if ptot > 0.0 else 0.0
        # dominant frequency and the top-N local maxima of the amplitude spectrum
        kbest = 1
        for k in range(2, nh):
            if amp[k] > amp[kbest]:
                kbest = k
        if nh > 1:
            row[DOMINANT_HZ] = kbest * df
        npeaks = 0
        for k in range(1, nh - 1):
            ak = amp[k]
            if ak > amp[k - 1] and ak >= amp[k + 1] and ak > 0.0:
                if npeaks < npk:
                    j = npeaks
                    npeaks += 1
                elif npk > 0 and ak > top_a[npk - 1]:
                    j = npk - 1
                else:
                    continue
                while j > 0 and top_a[j - 1] < ak:
                    top_a[j] = top_a[j - 1]
                    top_k[j] = top_k[j - 1]
                    j -= 1
                top_a[j] = ak
                top_k[j] = k
        po = BANDS0 + nb
        for j in range(npeaks):
            row[po + 2 * j] = top_k[j] * df
            row[po + 2 * j + 1] = top_a[j]
        # velocity RMS by integration in the frequency domain (vel_w folds in 1/(2πf)², units and mm/s)
        if vhi >= vlo:
            s = 0.0
            for k in range(vlo, vhi + 1):
                s += p[k] * vel_w[k - vlo]
            row[VELOCITY_RMS] = np.sqrt(s)
        # spectral kurtosis
        sk_band = -1
        if nps > 0 and n >= nps:
            sk = spectral_kurtosis(xd, sk_w, sk_hop)
            nf = sk.shape[0]
            fbest = 1
            for f in range(1, nf - 1):
                if sk[f] > sk[fbest]:
                    fbest = f
            row[SK_MAX] = sk[fbest]
            row[SK_MAX_HZ] = fbest * rate / nps
            if env_mode == 2:
                width = min(env_width_sk, nf - 2)
                best = -np.inf
                for f0 in range(1, nf - width):
                    s = 0.0
                    for f in range(f0, f0 + width):
                        s += sk[f]
                    if s > best:
                        best = s
                        sk_band = f0
                if sk_band > 0:
                    df_sk = rate / nps
                    lo_hz = (sk_band - 0.5) * df_sk
                    hi_hz = (sk_band + width - 0.5) * df_sk
                    env_klo = max(1, int(np.ceil(lo_hz / df)))
                    env_khi = min(nh - 2, int(np.floor(hi_hz / df)))
        # envelope analysis
        if env_mode == 1 or (env_mode == 2 and sk_band > 0):
            klo = max(1, env_klo)
            khi = min(nh - 2, env_khi, klo + env_m - 1)
            if khi >= klo:
                env, eamp = envelope_spectrum(spec, klo, khi, env_m, n)
                s = 0.0
                for i in range(env_m):
                    s += env[i] * env[i]
                row[ENV_RMS] = np.sqrt(s / (0.375 * env_m))
                kb = 2
                for k in range(3, eamp.shape[0]):
                    if eamp[k] > eamp[kb]:
                        kb = k
                if eamp.shape[0] > 2:
                    row[ENV_PEAK_HZ] = kb * df
                row[ENV_LO_HZ] = klo * df
                row[ENV_HI_HZ] = khi * df
                for j in range(4):
                    f = fault_hz[j]
                    row[BPFO + j] = _max_near(eamp, f, max(tol_frac * f, df), df)
                fi = fault_hz[1]
                fr = fault_hz[4]
                if fi > 0.0 and fr > 0.0:
                    tol = max(tol_frac * fi, df)
                    row[BPFI_SB] = 0.5 * (_max_near(eamp, fi - fr, tol, df) + _max_near(eamp, fi + fr, tol, df))
