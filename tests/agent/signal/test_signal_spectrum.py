"""Spectral features (bands, peaks, dominant frequency, velocity RMS and zones, spectral kurtosis) against known
answers and float64 SciPy references."""

import math

import numpy as np
import pytest
from signal_reference import band_energies, peaks, spectral_kurtosis, velocity_rms_mm_s
from signal_simulate import bearing_fault, tone

from agent.signal import iso, layout
from agent.signal.analyzer import Analyzer
from agent.signal.kernels import spectral_kurtosis as sk_kernel


def noisy(rate: float, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.7 + rng.normal(0, 0.5, n) + tone(rate, n, 123.4, 2.0) + tone(rate, n, 801.0, 0.8, 1.0)
            + tone(rate, n, 1450.2, 0.3))


@pytest.mark.parametrize("n", [4096, 3200, 1001])
def test_band_energies_tile_to_the_variance_and_match_reference(n):
    rate = 3200.0
    x = noisy(rate, n, seed=n)
    bands = [[0, 50], [50, 200.5], [200.5, 1000], [1000, 1600]]
    f = Analyzer({"bands": bands}, rate, n).features(x, digits=None)["x"]
    assert sum(f["bands"]) == pytest.approx(np.var(x), rel=1e-9)  # Parseval
    np.testing.assert_allclose(f["bands"], band_energies(x, rate, bands), rtol=1e-9)


def test_overlapping_and_partial_bands_match_reference():
    rate, n = 6400.0, 4096
    x = noisy(rate, n)
    bands = [[100, 150], [110, 900], [3000, 5000]]
    f = Analyzer({"bands": bands}, rate, n).features(x, digits=None)["x"]
    np.testing.assert_allclose(f["bands"], band_energies(x, rate, bands), rtol=1e-9)
    assert f["bands"][1] > f["bands"][0] > 0


def test_peaks_and_dominant_frequency_of_coherent_tones():
    rate, n = 3200.0, 4096
    df = rate / n
    x = tone(rate, n, 200 * df, 3.0) + tone(rate, n, 512 * df, 1.0) + tone(rate, n, 1000 * df, 0.5)
    f = Analyzer({"peaks": 3}, rate, n).features(x, digits=None)["x"]
    assert f["dominant_hz"] == pytest.approx(200 * df)
    got = [(hz, a) for hz, a in f["peaks"]]
    assert [hz for hz, _ in got] == pytest.approx([200 * df, 512 * df, 1000 * df])
    assert [a for _, a in got] == pytest.approx([3.0, 1.0, 0.5], rel=1e-9)  # Hann amplitude of a bin-centred tone


def test_peaks_match_reference_on_noise():
    rate, n = 3200.0, 4096
    x = noisy(rate, n, seed=5)
    f = Analyzer({"peaks": 8}, rate, n).features(x, digits=None)["x"]
    ref = peaks(x, rate, 8)
    np.testing.assert_allclose(np.array(f["peaks"]), np.array(ref), rtol=1e-9)


def test_velocity_of_a_100_hz_10_ms2_tone_is_11_254_mm_s():
    rate, n = 6400.0, 8192  # 100 Hz is bin 128
    x = tone(rate, n, 100.0, 10.0)
    v = Analyzer({}, rate, n).features(x, digits=None)["x"]["velocity_rms"]
    # 10 / (2π·100) / √2 m/s = 11.2540 mm/s (the Hann main lobe spreads it over bins 127…129
    # whose 1/f² differ: +(Δf/f)²/2 = +3e-5 relative)
    assert v == pytest.approx(10 / (2 * math.pi * 100) / math.sqrt(2) * 1e3, rel=1e-4)
    assert round(v, 3) == 11.254
    assert v == pytest.approx(velocity_rms_mm_s(x, rate), rel=1e-9)
    # tones outside 10…1000 Hz do not count
    y = x + tone(rate, n, 5.0, 1.0) + tone(rate, n, 2000.0, 20.0)
    vy = Analyzer({}, rate, n).features(y, digits=None)["x"]["velocity_rms"]
    assert vy == pytest.approx(v, rel=1e-4)
    assert vy == pytest.approx(velocity_rms_mm_s(y, rate), rel=1e-9)


def test_velocity_in_g_and_a_custom_band():
    rate, n = 6400.0, 8192
    x = tone(rate, n, 100.0, 10.0 / 9.80665) + tone(rate, n, 50.0, 0.1)
    got = Analyzer({"accel_unit": "g", "velocity_band": [80, 120]}, rate, n).features(x, digits=None)["x"]
    assert got["velocity_rms"] == pytest.approx(velocity_rms_mm_s(x * 9.80665, rate, 80, 120), rel=1e-9)
    assert round(got["velocity_rms"], 3) == 11.254


def test_iso_zones_from_presets_and_explicit_limits():
    rate, n = 6400.0, 4096
    x = tone(rate, n, 100.0, 10.0)  # 11.254 mm/s
    assert Analyzer({"iso": "group1_flexible"}, rate, n).features(x)["x"]["zone"] == "D"
    assert Analyzer({"zones": [5, 12, 20]}, rate, n).features(x)["x"]["zone"] == "B"
    assert "zone" not in Analyzer({}, rate, n).features(x)["x"]
    assert iso.zone(1.4, iso.PRESETS["group2_rigid"]) == "B"  # a boundary value belongs to the worse zone
    assert iso.zone(1.39, iso.PRESETS["group2_rigid"]) == "A"
    assert iso.zone(4.5, iso.PRESETS["group2_rigid"]) == "D"
    assert iso.PRESETS["group1_rigid"] == (2.3, 4.5, 7.1)
    assert iso.worst(["A", None, "C", "B"]) == "C"


@pytest.mark.parametrize("nperseg,hop", [(64, 32), (128, 32)])
def test_spectral_kurtosis_matches_scipy_stft_reference(nperseg, hop):
    rate, n = 12000.0, 4096
    rng = np.random.default_rng(11)
    x = rng.normal(size=n)
    x[::97] += 8.0  # impulsive content
    f_ref, sk_ref = spectral_kurtosis(x, rate, nperseg, hop)
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(nperseg) / nperseg)
    sk = sk_kernel(x - x.mean(), w, hop)
    np.testing.assert_allclose(sk[1:-1], sk_ref[1:-1], rtol=1e-9)
    row = Analyzer({"sk": True, "sk_nperseg": nperseg, "sk_hop": hop}, rate, n).compute(x)[0]
    k = int(np.argmax(sk_ref[1:-1])) + 1
    assert row[layout.SK_MAX] == pytest.approx(sk_ref[k], rel=1e-9)
    assert row[layout.SK_MAX_HZ] == pytest.approx(f_ref[k])


def test_spectral_kurtosis_is_near_zero_for_gaussian_noise_and_high_in_an_impulsive_band():
    rate, n = 12000.0, 16384
    rng = np.random.default_rng(2)
    noise = rng.normal(size=n)
    row = Analyzer({"sk": True}, rate, n).compute(noise)[0]
    # for Gaussian noise the estimator's standard error is about sqrt(4/K) = 0.13 with K = 511 segments
    assert row[layout.SK_MAX] < 0.5
    x = bearing_fault(rate, n, 29.95, 107.36, resonance_hz=4000.0, noise=0.5, shaft_amp=0.0, impulse=6.0)
    row = Analyzer({"sk": True}, rate, n).compute(x)[0]
    assert row[layout.SK_MAX] > 1.0
    assert abs(row[layout.SK_MAX_HZ] - 4000.0) <= 2 * rate / 64
