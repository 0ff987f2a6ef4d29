"""Properties over generated windows (Hypothesis): the kernel agrees with the SciPy reference for any length,
offset and scale, and bands that tile the spectrum always sum to the variance."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from signal_reference import band_energies, time_features

from agent.signal.analyzer import Analyzer

# offsets up to 1000× the fluctuation (a 1 g offset on a 0.01 m/s² signal): beyond that the float64 references'
# own rounding exceeds 1e-9 in the odd moments
windows = st.builds(
    lambda n, seed, offset, scale, tone: (
        offset * scale + scale * (np.random.default_rng(seed).standard_t(4, n)
                                  + tone * np.sin(np.arange(n) * 0.37))),
    n=st.integers(16, 3000), seed=st.integers(0, 2**32 - 1), offset=st.floats(-1e3, 1e3),
    scale=st.floats(1e-3, 1e3), tone=st.floats(0, 5))


@settings(max_examples=40, deadline=None)
@given(x=windows, cuts=st.lists(st.floats(1, 1599), min_size=1, max_size=6, unique=True))
def test_kernel_matches_reference_and_tiling_bands_sum_to_the_variance(x, cuts):
    rate = 3200.0
    edges = [0.0, *sorted(cuts), rate / 2]
    bands = [[lo, hi] for lo, hi in zip(edges, edges[1:]) if hi > lo]
    f = Analyzer({"bands": bands}, rate, len(x)).features(x, digits=None)["x"]
    ref = time_features(x)
    for name in ("rms", "peak", "p2p", "crest", "skewness", "kurtosis", "shape", "impulse", "clearance"):
        assert f[name] == pytest.approx(ref[name], rel=1e-9, abs=1e-12 * abs(ref["peak"])), name
    assert f["mean"] == pytest.approx(ref["mean"], rel=1e-9, abs=1e-12 * ref["peak"])
    assert sum(f["bands"]) == pytest.approx(np.var(x), rel=1e-9)
    np.testing.assert_allclose(f["bands"], band_energies(x, rate, bands), rtol=1e-9, atol=1e-12 * np.var(x))
