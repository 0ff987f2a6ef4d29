"""Time-domain features against known answers and against float64 NumPy/SciPy references."""

import math

import numpy as np
import pytest
from signal_reference import time_features
from signal_simulate import tone

from agent.signal import layout
from agent.signal.analyzer import Analyzer

RATE = 3200.0
N = 4096


def features(x: np.ndarray, **settings) -> dict:
    return Analyzer(settings, RATE, len(x)).features(x, digits=None)["x"]


def test_coherent_sine_has_textbook_values():
    a = 2.5
    f = features(tone(RATE, N, 100.0, a))  # 100 Hz is bin 128: 128 whole cycles in the window
    assert f["rms"] == pytest.approx(a / math.sqrt(2), rel=1e-12)
    assert f["peak"] == pytest.approx(a, rel=1e-12)
    assert f["p2p"] == pytest.approx(2 * a, rel=1e-12)
    assert f["crest"] == pytest.approx(math.sqrt(2), rel=1e-12)
    assert f["kurtosis"] == pytest.approx(1.5, rel=1e-12)
    assert abs(f["skewness"]) < 1e-12
    # 32 samples per cycle: mean |sin| = 2·cot(π/32)/32 (→ 2/π for a continuous sine)
    mean_abs = a * 2 / (32 * math.tan(math.pi / 32))
    assert f["shape"] == pytest.approx(a / math.sqrt(2) / mean_abs, rel=1e-12)
    assert f["impulse"] == pytest.approx(a / mean_abs, rel=1e-12)


def test_square_wave_crest_shape_and_kurtosis_are_one():
    x = np.where((np.arange(N) // 16) % 2 == 0, 3.0, -3.0)
    f = features(x)
    for name in ("crest", "shape", "impulse", "clearance", "kurtosis"):
        assert f[name] == pytest.approx(1.0, rel=1e-12), name
    assert f["rms"] == pytest.approx(3.0, rel=1e-12)


def test_gaussian_noise_kurtosis_is_three_within_statistical_bounds():
    rng = np.random.default_rng(7)
    windows = rng.normal(0.0, 2.0, size=(N, 16))
    rows = Analyzer({}, RATE, N).compute(windows)
    k = rows[:, layout.KURTOSIS]
    # the standard error of the sample kurtosis of n Gaussian samples is sqrt(24/n); 16 windows average it down
    assert abs(k.mean() - 3.0) < 5 * math.sqrt(24 / N) / 4
    assert abs(rows[:, layout.SKEWNESS].mean()) < 5 * math.sqrt(6 / N) / 4


@pytest.mark.parametrize("n", [N, 1000, 333])
def test_time_features_match_scipy_reference(n):
    rng = np.random.default_rng(n)
    x = 4.0 + rng.standard_t(5, size=n) + tone(RATE, n, 37.3, 1.5)  # offset, heavy tails, a tone
    got = features(x, peaks=0, velocity=False)
    for name, ref in time_features(x).items():
        assert got[name] == pytest.approx(ref, rel=1e-9), name


def test_all_axes_of_a_window_are_computed_independently():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, 3)) * [1.0, 2.0, 5.0] + [0.0, 1.0, -9.81]
    rows = Analyzer({}, RATE, N).compute(x)
    for k in range(3):
        ref = time_features(x[:, k])
        assert rows[k, layout.RMS] == pytest.approx(ref["rms"], rel=1e-9)
        assert rows[k, layout.MEAN] == pytest.approx(ref["mean"], rel=1e-9)


def test_legacy_rms_peak_kernel_still_works():
    from agent.signal import rms_peak
    x = np.array([3.0, -4.0, 0.0, 0.0])
    rms, peak = rms_peak(x)
    assert rms == pytest.approx(2.5) and peak == 4.0
