"""Benchmark of the signal core (prints tables; not a timed test).

In one run, for a 4096-sample window with every feature on (time domain, 3 bands, 5 peaks, velocity + ISO zone,
spectral kurtosis, envelope with an SK-chosen band, bearing defect amplitudes):

1. per-window time of the Numba kernel vs a plain NumPy/SciPy implementation of the same features (library
   calls: scipy.stats, scipy.signal.stft / hilbert / find_peaks, a spectrum per feature) vs a carefully
   vectorised NumPy one (one rfft reused, cumulative sums, a decimated envelope, batched STFT); all three are
   checked to agree first;
2. the FFT engine: rocket-fft inside Numba vs numpy.fft called from Python, for the transforms a window needs;
3. CPU-seconds per sensor-second through the real processor (`agent.processing`): a 3-axis 3.2 kHz
   accelerometer (window 4096, no overlap) and one 25.6 kHz channel (window 4096, 50 % overlap);
4. start-up: process start to first feature with a cold and with a warm Numba cache, and the peak RSS of that
   process.

Usage: python bench/bench_signal.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "signal"))  # the SciPy references and the simulated faults

CACHE = tempfile.mkdtemp(prefix="bench-numba-")
os.environ["NUMBA_CACHE_DIR"] = CACHE  # a private cache: the start-up measurement controls cold vs warm

import numpy as np  # noqa: E402
import signal_reference as ref  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402
from signal_simulate import bearing_fault  # noqa: E402

from agent.signal import layout  # noqa: E402

RATE = 25600.0
N = 4096
SHAFT = 29.95
FEATURES = {"bands": [[0, 1000], [1000, 5000], [5000, 12800]], "peaks": 5, "iso": "group2_rigid",
            "bearing": "6205", "envelope": {"band": "auto"}, "sk": True}


# ---------------------------------------------------------------------------------------------- implementations

def plain_scipy(x: np.ndarray, an) -> dict:  # type: ignore[no-untyped-def]
    """The same features written the obvious way with NumPy/SciPy library calls."""
    out = ref.time_features(x)
    f, _, _, amp = ref.spectrum(x, RATE)
    out["dominant_hz"] = f[1 + np.argmax(amp[1:])]
    out["peaks"] = ref.peaks(x, RATE, 5)
    out["bands"] = ref.band_energies(x, RATE, FEATURES["bands"])
    out["velocity_rms"] = ref.velocity_rms_mm_s(x, RATE)
    fsk, sk = ref.spectral_kurtosis(x, RATE, an.sk_nperseg, an.sk_hop)
    out["sk_max"] = sk[1:-1].max()
    width = an.env_width_sk
    mean_sk = np.convolve(sk[1:-1], np.ones(width), "valid")
    f0 = 1 + int(np.argmax(mean_sk))
    dsk = RATE / an.sk_nperseg
    lo, hi = (f0 - 0.5) * dsk, (f0 + width - 0.5) * dsk
    _, fe, eamp = ref.envelope(x, RATE, lo, hi, an.env_m)
    for name, order in an.orders.items():
        fault = order * SHAFT
        tol = max(an.slip * fault, an.df)
        sel = (np.abs(fe - fault) <= tol) & (fe >= 2 * an.df)
        out[name] = eamp[sel].max()
    return out


def vectorised_numpy(x: np.ndarray, an, c: np.ndarray, wsk: np.ndarray) -> dict:  # type: ignore[no-untyped-def]
    """The same features, vectorised with care: one rfft reused, no per-feature spectra, a decimated envelope."""
    n = x.shape[0]
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
    nps, hop = an.sk_nperseg, an.sk_hop
    s = np.fft.rfft(sliding_window_view(d, nps)[::hop] * wsk, axis=1)
    ps = s.real ** 2 + s.imag ** 2
    sk = ps.shape[0] * (ps * ps).sum(axis=0) / ps.sum(axis=0) ** 2 - 2.0
    out["sk_max"] = sk[1:-1].max()
    width = an.env_width_sk
    f0 = 1 + int(np.argmax(np.convolve(sk[1:-1], np.ones(width), "valid")))
    dsk = RATE / nps
    klo = max(1, int(np.ceil((f0 - 0.5) * dsk / an.df)))
    khi = min(len(y) - 2, int(np.floor((f0 + width - 0.5) * dsk / an.df)))
    m = an.env_m
    zb = np.zeros(m, complex)
    zb[:khi - klo + 1] = 2.0 * y[klo:khi + 1]
    env = (m / n) * np.abs(np.fft.ifft(zb))
    eamp = (4.0 / m) * np.abs(np.fft.rfft(env))
    for name, order in an.orders.items():
        fault = order * SHAFT
        tol = max(an.slip * fault, an.df)
        k0, k1 = max(2, int(np.ceil((fault - tol) / an.df))), int(np.floor((fault + tol) / an.df))
        out[name] = eamp[k0:k1 + 1].max()
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
    for other in (plain_scipy(x, an), vectorised_numpy(x, an, c, wsk)):
        for k in ("rms", "kurtosis", "skewness", "clearance", "velocity_rms", "sk_max", "dominant_hz",
                  "bpfo", "bpfi", "bsf", "ftf"):
            worst = max(worst, abs(other[k] - nb[k]) / abs(nb[k]))
        worst = max(worst, float(np.max(np.abs(np.asarray(other["bands"]) - nb["bands"]) / nb["bands"])))
        worst = max(worst, float(np.max(np.abs(np.asarray(other["peaks"]) - nb["peaks"]) / nb["peaks"])))
    return worst


# ---------------------------------------------------------------------------------------------- measurement

def per_call_us(fn, min_time: float = 0.6) -> float:  # type: ignore[no-untyped-def]
    """CPU time per call, µs: the best of 7 batches of process CPU time (not wall time, so other processes on a
    shared machine do not inflate it)."""
    fn()
    reps = 1
    while True:
        t = time.process_time()
        for _ in range(reps):
            fn()
        dt = time.process_time() - t
        if dt > min_time / 7 or reps > 1 << 20:
            break
        reps *= 2
    samples = []
    for _ in range(7):
        t = time.process_time()
        for _ in range(reps):
            fn()
        samples.append((time.process_time() - t) / reps)
    return float(np.min(samples) * 1e6)


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
        inside = per_call_us(lambda: loop(arg, 100), 0.3) / 100
        rows.append((name, inside, per_call_us(np_call, 0.3)))
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


STARTUP = r"""
import time, sys
from agent.signal.cache import configure_cache
configure_cache(sys.argv[1])
import numpy as np
from agent.config import SensorConfig
from agent.processing import make_processor
from hal.types import Block
sensor = SensorConfig(name="vib", driver="emulated.vibration", kind="stream", options={"rate_hz": 25600.0},
                      window=4096, hop=4096, features={"bands": [[0, 1000], [1000, 12800]], "iso": "group2_rigid",
                      "bearing": "6205", "shaft_hz": 29.95, "envelope": {"band": "auto"}})
proc = make_processor(sensor)
x = np.random.default_rng(0).normal(size=4096)
out = proc.on_block(Block("vib", 0, 25600.0, x, "m/s2"))
assert out and out[0].payload["features"]["x"]["rms"] > 0
first = time.time()
import resource
print(first, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "scipy.fft" in sys.modules)
"""


def startup(cache_dir: str) -> tuple[float, float, int, bool]:
    """Process start to the first features record: wall seconds, CPU seconds (user + system), peak RSS (KiB),
    and whether scipy.fft was imported."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = time.time()
    r = subprocess.run([sys.executable, "-c", STARTUP, cache_dir], capture_output=True, text=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise RuntimeError(r.stderr)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)  # includes the exit
    first, rss, scipy_fft = r.stdout.split()
    return float(first) - launched, cpu, int(rss), scipy_fft == "True"


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
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    seconds = 10.0 if args.quick else 30.0
    print(f"machine: {machine()}")

    # start-up first: the cache directory is still empty
    cold, cold_cpu, cold_rss, _ = startup(CACHE)
    warm_runs = [startup(CACHE) for _ in range(5)]
    warm = min(r[0] for r in warm_runs)
    warm_cpu = min(r[1] for r in warm_runs)
    warm_rss = max(r[2] for r in warm_runs)
    scipy_fft = any(r[3] for r in warm_runs)

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
    t_numba = per_call_us(lambda: an.compute(x1, SHAFT, out))
    t_numba3 = per_call_us(lambda: an.compute(x3, SHAFT, out3))
    t_plain = per_call_us(lambda: plain_scipy(x, an))
    t_vec = per_call_us(lambda: vectorised_numpy(x, an, c, wsk))

    print(f"\nfull feature set, one {N}-sample window at {RATE:g} Hz (implementations agree to {worst:.1e}; "
          "best of 7 batches of process CPU time):")
    print("| implementation | CPU µs per window | Numba speed-up |")
    print("|---|---:|---:|")
    print(f"| Numba kernel (`analyze_window`), 1 axis | {t_numba:.0f} | 1× |")
    print(f"| Numba kernel, 3 axes in one call | {t_numba3:.0f} ({t_numba3 / 3:.0f} per axis) | |")
    print(f"| plain NumPy/SciPy | {t_plain:.0f} | {t_plain / t_numba:.1f}× |")
    print(f"| vectorised NumPy | {t_vec:.0f} | {t_vec / t_numba:.1f}× |")

    print("\nFFT engine, CPU µs per transform:")
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

    print("\nstart-up, process start to first features record (python -c, import, processor, one window):")
    print("| cache | seconds to first record | CPU seconds (whole process) | peak RSS |")
    print("|---|---:|---:|---:|")
    print(f"| cold (compiles, writes the cache) | {cold:.2f} | {cold_cpu:.2f} | {cold_rss / 1024:.0f} MB |")
    print(f"| warm (best of 5) | {warm:.2f} | {warm_cpu:.2f} | {warm_rss / 1024:.0f} MB |")
    print(f"scipy.fft imported by the agent process: {'yes' if scipy_fft else 'no'}; "
          f"this benchmark's own peak RSS (with SciPy): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")

    print("\ntargets: ≥ 20× plain SciPy: {}, ≥ 2.5× vectorised NumPy: {}, ≤ 0.2 ms per window: {}, "
          "≤ 1 s to first feature (warm): {}".format(
              *("met" if ok else "NOT met" for ok in (t_plain / t_numba >= 20, t_vec / t_numba >= 2.5,
                                                      t_numba <= 200, warm <= 1.0))))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "numba_us": t_numba, "numba_3axes_us": t_numba3, "plain_us": t_plain,
            "vectorised_us": t_vec, "agree": worst, "fft": engines, "cpu_3axis_3k2": a3, "cpu_25k6_50pct": hf,
            "cold_s": cold, "warm_s": warm, "warm_cpu_s": warm_cpu, "warm_rss_kb": warm_rss}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
