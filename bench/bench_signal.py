"""Benchmark of the signal core (prints tables; not a timed test).

In one run, for a 4096-sample window at 25.6 kHz with every feature on (time domain, 3 bands, 5 peaks, velocity +
ISO zone, spectral kurtosis, envelope with an SK-chosen band, bearing defect amplitudes):

1. per-window CPU time of the Numba kernel vs two NumPy/SciPy implementations of the same features, written the
   way a careful user would: "SciPy, careful" (vectorised, `np.fft.rfft` once for every spectral feature, a
   batched STFT for the spectral kurtosis, `scipy.signal.find_peaks`, the envelope by `scipy.signal.hilbert`) and
   "NumPy, the kernel's algorithm" (the same, with the kernel's decimated envelope: one short inverse FFT instead
   of the full-length Hilbert transform); all three are checked to agree first;
2. the FFT engine: rocket-fft inside Numba vs numpy.fft called from Python, for the transforms a window needs;
3. CPU-seconds per sensor-second through the real processor (`agent.processing`): a 3-axis 3.2 kHz
   accelerometer (window 4096, no overlap) and one 25.6 kHz channel (window 4096, 50 % overlap).

Timing is interleaved: the implementations take turns (A B C A B C ...), each turn a batch of calls of about
50 ms of process CPU time; the tables give the min and the median over the turns, and speed-ups as ratios of
medians (and of mins) within this run. CPU time, not wall time, so other processes on a shared machine inflate
it less; the ratios are the figures to quote. Start-up of the agent is measured by bench/bench_startup.py (the
real `edge-agent run`).

Usage: python bench/bench_signal.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "signal"))  # the SciPy references and the simulated faults

if not os.environ.get("NUMBA_CACHE_DIR"):
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-numba-")  # compiles once, outside the timing

import numpy as np  # noqa: E402
import scipy.signal  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402
from signal_simulate import bearing_fault  # noqa: E402

from agent.signal import layout  # noqa: E402

RATE = 25600.0
N = 4096
SHAFT = 29.95
FEATURES = {"bands": [[0, 1000], [1000, 5000], [5000, 12800]], "peaks": 5, "iso": "group2_rigid",
            "bearing": "6205", "envelope": {"band": "auto"}, "sk": True}


# ---------------------------------------------------------------------------------------------- implementations

def _time_domain(x: np.ndarray) -> tuple[dict, np.ndarray, float]:  # type: ignore[type-arg]
    mean = x.mean()
    d = x - mean
    d2 = d * d
    m2 = d2.mean()
    a = np.abs(d)
    mabs = a.mean()
    peak = a.max()
    rms = np.sqrt(m2)
    out = {"mean": mean, "rms": rms, "peak": peak, "p2p": np.ptp(x), "crest": peak / rms,
           "skewness": (d2 * d).mean() / (m2 * rms), "kurtosis": (d2 * d2).mean() / (m2 * m2),
           "shape": rms / mabs, "impulse": peak / mabs, "clearance": peak / np.sqrt(a).mean() ** 2}
    return out, d, m2


def _sk_band(d: np.ndarray, an, wsk: np.ndarray) -> tuple[float, int, int]:  # type: ignore[no-untyped-def]
    """Spectral kurtosis from a batched STFT (one rfft call), and the SK-chosen band as main-spectrum bins."""
    nps, hop = an.sk_nperseg, an.sk_hop
    s = np.fft.rfft(sliding_window_view(d, nps)[::hop] * wsk, axis=1)
    ps = s.real ** 2 + s.imag ** 2
    sk = ps.shape[0] * (ps * ps).sum(axis=0) / ps.sum(axis=0) ** 2 - 2.0
    width = an.env_width_sk
    f0 = 1 + int(np.argmax(np.convolve(sk[1:-1], np.ones(width), "valid")))
    dsk = RATE / nps
    klo = max(1, int(np.ceil((f0 - 0.5) * dsk / an.df)))
    khi = min(an.n // 2 - 1, int(np.floor((f0 + width - 0.5) * dsk / an.df)))
    return float(sk[1:-1].max()), klo, khi


def _bearing(out: dict, eamp: np.ndarray, an) -> None:  # type: ignore[no-untyped-def, type-arg]
    for name, order in an.orders.items():
        fault = order * SHAFT
        tol = max(an.slip * fault, an.df)
        k0, k1 = max(2, int(np.ceil((fault - tol) / an.df))), int(np.floor((fault + tol) / an.df))
        out[name] = eamp[k0:k1 + 1].max()


def careful_scipy(x: np.ndarray, an, c: np.ndarray, wsk: np.ndarray) -> dict:  # type: ignore[no-untyped-def]
    """The same features as a careful NumPy/SciPy user writes them: vectorised, one rfft for every spectral
    feature, a batched STFT, scipy.signal.find_peaks, and the envelope by scipy.signal.hilbert (full length)."""
    out, d, m2 = _time_domain(x)
    y = np.fft.rfft(d * an.window)
    pw = y.real ** 2 + y.imag ** 2
    p = c * pw
    amp = (2.0 / an.sum_w) * np.sqrt(pw)
    cs = np.concatenate(([0.0], np.cumsum(p)))
    out["bands"] = m2 * (cs[an.band_bins[:, 1]] - cs[an.band_bins[:, 0]]) / cs[-1]
    out["dominant_hz"] = (1 + np.argmax(amp[1:])) * an.df
    idx, _ = scipy.signal.find_peaks(amp)
    top = idx[np.argsort(-amp[idx], kind="stable")[:an.n_peaks]]
    out["peaks"] = np.stack([top * an.df, amp[top]], axis=1)
    out["velocity_rms"] = np.sqrt(p[an.vlo:an.vhi + 1] @ an.vel_w)
    out["sk_max"], klo, khi = _sk_band(d, an, wsk)
    yb = np.zeros_like(y)
    yb[klo:khi + 1] = y[klo:khi + 1]
    env = np.abs(scipy.signal.hilbert(np.fft.irfft(yb, an.n)))
    _bearing(out, (4.0 / an.n) * np.abs(np.fft.rfft(env)), an)
    return out


def vectorised_numpy(x: np.ndarray, an, c: np.ndarray, wsk: np.ndarray) -> dict:  # type: ignore[no-untyped-def]
    """The kernel's algorithm in NumPy: one rfft reused, cumulative sums, a batched STFT, a decimated envelope."""
    out, d, m2 = _time_domain(x)
    n = x.shape[0]
    y = np.fft.rfft(d * an.window)
    pw = y.real ** 2 + y.imag ** 2
    p = c * pw
    amp = (2.0 / an.sum_w) * np.sqrt(pw)
    cs = np.concatenate(([0.0], np.cumsum(p)))
    out["bands"] = m2 * (cs[an.band_bins[:, 1]] - cs[an.band_bins[:, 0]]) / cs[-1]
    out["dominant_hz"] = (1 + np.argmax(amp[1:])) * an.df
    inner = amp[1:-1]
    idx = np.flatnonzero((inner > amp[:-2]) & (inner >= amp[2:]) & (inner > 0)) + 1
    top = idx[np.argsort(-amp[idx], kind="stable")[:an.n_peaks]]
    out["peaks"] = np.stack([top * an.df, amp[top]], axis=1)
    out["velocity_rms"] = np.sqrt(p[an.vlo:an.vhi + 1] @ an.vel_w)
    out["sk_max"], klo, khi = _sk_band(d, an, wsk)
    m = an.env_m
    zb = np.zeros(m, complex)
    zb[:khi - klo + 1] = 2.0 * y[klo:khi + 1]
    env = (m / n) * np.abs(np.fft.ifft(zb))
    _bearing(out, (4.0 / m) * np.abs(np.fft.rfft(env)), an)
    return out


def numba_named(row: np.ndarray, an) -> dict:  # type: ignore[no-untyped-def]
    d = {name: row[i] for i, name in enumerate(layout.SCALAR_NAMES)}
    d["bands"] = row[layout.BANDS0:layout.BANDS0 + 3]
    p0 = layout.BANDS0 + 3
    d["peaks"] = row[p0:p0 + 10].reshape(5, 2)
    return d


def check_agreement(x, an, c, wsk) -> float:  # type: ignore[no-untyped-def]
    """Largest relative difference between the three implementations over the compared features."""
    nb = numba_named(an.compute(x, SHAFT)[0], an)
    worst = 0.0
    for other in (careful_scipy(x, an, c, wsk), vectorised_numpy(x, an, c, wsk)):
        for k in ("rms", "kurtosis", "skewness", "clearance", "velocity_rms", "sk_max", "dominant_hz",
                  "bpfo", "bpfi", "bsf", "ftf"):
            worst = max(worst, abs(other[k] - nb[k]) / abs(nb[k]))
        worst = max(worst, float(np.max(np.abs(np.asarray(other["bands"]) - nb["bands"]) / nb["bands"])))
        worst = max(worst, float(np.max(np.abs(np.asarray(other["peaks"]) - nb["peaks"]) / nb["peaks"])))
    return worst


# ---------------------------------------------------------------------------------------------- measurement

def interleaved_us(fns: dict, turns: int = 15, batch_s: float = 0.05  # type: ignore[type-arg]
                   ) -> dict[str, list[float]]:
    """CPU µs per call of each function, per turn: the functions take turns (A B C A B C ...), each turn one batch
    of about `batch_s` of process CPU time (not wall time, so other processes on a shared machine inflate it
    less)."""
    reps: dict[str, int] = {}
    for name, fn in fns.items():
        fn()
        r = 1
        while True:
            t = time.process_time()
            for _ in range(r):
                fn()
            if time.process_time() - t > batch_s / 4 or r > 1 << 20:
                break
            r *= 2
        reps[name] = r * 4
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(turns):
        for name, fn in fns.items():
            r = reps[name]
            t = time.process_time()
            for _ in range(r):
                fn()
            out[name].append((time.process_time() - t) / r * 1e6)
    return out


def lo_med(v: list[float]) -> tuple[float, float]:
    return min(v), statistics.median(v)


def fft_engines() -> list[tuple[str, float, float]]:
    from numba import njit

    import agent.signal.kernels  # noqa: F401  (loads rocket-fft the way the service does)

    @njit(cache=True, nogil=True)
    def rfft_loop(x, reps):
        s = 0.0
        for _ in range(reps):
            s += np.fft.rfft(x)[1].real
        return s

    @njit(cache=True, nogil=True)
    def ifft_loop(z, reps):
        s = 0.0
        for _ in range(reps):
            s += np.fft.ifft(z)[1].real
        return s

    @njit(cache=True, nogil=True)
    def rfft2_loop(x, reps):
        s = 0.0
        for _ in range(reps):
            s += np.fft.rfft(x, axis=1)[0, 1].real
        return s

    rng = np.random.default_rng(0)
    x = rng.normal(size=N)
    z = rng.normal(size=512) + 1j * rng.normal(size=512)
    segs = rng.normal(size=(127, 64))
    rows = []
    for name, loop, arg, np_call in (
            ("rfft 4096", rfft_loop, x, lambda: np.fft.rfft(x)),
            ("ifft 512 (complex)", ifft_loop, z, lambda: np.fft.ifft(z)),
            ("rfft 127×64 (STFT batch)", rfft2_loop, segs, lambda: np.fft.rfft(segs, axis=1))):
        loop(arg, 1)
        t = interleaved_us({"inside": lambda: loop(arg, 100), "numpy": np_call}, turns=7, batch_s=0.03)
        rows.append((name, statistics.median(t["inside"]) / 100, statistics.median(t["numpy"])))
    return rows


def cpu_per_sensor_second(rate: float, axes: int, window: int, hop: int, seconds: float) -> float:
    from agent.config import SensorConfig
    from agent.processing import ValueBoard, make_processor
    from hal.types import Block

    features = dict(FEATURES, shaft_hz=SHAFT)
    features["bands"] = [[lo, min(hi, rate / 2)] for lo, hi in FEATURES["bands"] if lo < rate / 2]
    sensor = SensorConfig(name="vib", driver="emulated.vibration", kind="stream", options={"rate_hz": rate},
                          window=window, hop=hop, features=features)
    proc = make_processor(sensor, ValueBoard())
    n = int(rate * seconds)
    rng = np.random.default_rng(1)
    x = np.stack([bearing_fault(rate, n, SHAFT, 107.36, seed=k) for k in range(axes)], axis=1) \
        + 0.01 * rng.normal(size=(n, axes))
    block = int(rate / 10)
    names = ("x", "y", "z")[:axes]
    blocks = [Block("vib", 10**18 + int(i * 1e9 / rate), rate, x[i:i + block], "m/s2", axes=names)
              for i in range(0, n - block + 1, block)]
    t = time.process_time()
    windows = 0
    for b in blocks:
        windows += len(proc.on_block(b))
    return (time.process_time() - t) / seconds


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python "
            f"{platform.python_version()}, NumPy {np.__version__}, Numba {numba.__version__}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (noisier figures)")
    ap.add_argument("--turns", type=int, default=15, help="interleaved turns per implementation (default 15)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    seconds = 10.0 if args.quick else 30.0
    turns = min(args.turns, 7) if args.quick else args.turns
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at start")

    from agent.signal.analyzer import Analyzer, hann

    an = Analyzer(FEATURES, RATE, N)
    c = np.full(N // 2 + 1, 2.0)
    c[0] = c[-1] = 1.0
    c /= N * an.sum_w2
    wsk = hann(an.sk_nperseg)
    x = bearing_fault(RATE, N, SHAFT, 107.36, seed=2)
    x3 = np.ascontiguousarray(np.stack([x, np.roll(x, 100), np.roll(x, 200)], axis=1))
    worst = check_agreement(x, an, c, wsk)
    out = np.empty((1, an.row_length))
    out3 = np.empty((3, an.row_length))
    x1 = np.ascontiguousarray(x[:, None])
    t = interleaved_us({
        "numba": lambda: an.compute(x1, SHAFT, out),
        "numba3": lambda: an.compute(x3, SHAFT, out3),
        "scipy": lambda: careful_scipy(x, an, c, wsk),
        "numpy": lambda: vectorised_numpy(x, an, c, wsk),
    }, turns=turns)
    (nb_lo, nb_med), (nb3_lo, nb3_med) = lo_med(t["numba"]), lo_med(t["numba3"])
    (sc_lo, sc_med), (np_lo, np_med) = lo_med(t["scipy"]), lo_med(t["numpy"])

    print(f"\nfull feature set, one {N}-sample window at {RATE:g} Hz (implementations agree to {worst:.1e}); CPU µs "
          f"per window, {turns} interleaved turns:")
    print("| implementation | min | median | Numba speed-up (medians; mins) |")
    print("|---|---:|---:|---:|")
    print(f"| Numba kernel (`analyze_window`), 1 axis | {nb_lo:.0f} | {nb_med:.0f} | 1× |")
    print(f"| Numba kernel, 3 axes in one call | {nb3_lo:.0f} | {nb3_med:.0f} ({nb3_med / 3:.0f} per axis) | |")
    print(f"| NumPy/SciPy, careful (one rfft, `scipy.signal.hilbert`) | {sc_lo:.0f} | {sc_med:.0f} | "
          f"{sc_med / nb_med:.1f}×; {sc_lo / nb_lo:.1f}× |")
    print(f"| NumPy, the kernel's algorithm (decimated envelope) | {np_lo:.0f} | {np_med:.0f} | "
          f"{np_med / nb_med:.1f}×; {np_lo / nb_lo:.1f}× |")

    print("\nFFT engine, CPU µs per transform (median of 7 interleaved turns):")
    print("| transform | rocket-fft inside Numba | numpy.fft from Python |")
    print("|---|---:|---:|")
    engines = fft_engines()
    for name, inside, outside in engines:
        print(f"| {name} | {inside:.1f} | {outside:.1f} |")

    print(f"\nthrough the processor ({seconds:g} s of signal, every feature on):")
    print("| sensor | CPU-s per sensor-second | windows per second |")
    print("|---|---:|---:|")
    a3 = cpu_per_sensor_second(3200.0, 3, 4096, 4096, seconds)
    print(f"| 3-axis 3.2 kHz accelerometer, window 4096, no overlap | {a3:.4f} | {3200 / 4096:.2f} |")
    hf = cpu_per_sensor_second(25600.0, 1, 4096, 2048, seconds)
    print(f"| 1 channel 25.6 kHz, window 4096, 50 % overlap | {hf:.4f} | {25600 / 2048:.1f} |")
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "numba_us": t["numba"], "numba_3axes_us": t["numba3"], "scipy_us": t["scipy"],
            "numpy_us": t["numpy"], "agree": worst, "fft": engines, "cpu_3axis_3k2": a3, "cpu_25k6_50pct": hf},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
