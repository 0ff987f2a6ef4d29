"""`edge-agent analyze` and `edge-agent warmup`, and the Numba cache directory."""

import json
import os
import subprocess
import sys
import wave

import numpy as np
import pytest
from signal_reference import time_features, velocity_rms_mm_s
from signal_simulate import bearing_fault, tone

from agent.cli import main
from agent.signal import kernels
from agent.signal.analyzer import Analyzer
from agent.signal.cache import configure_cache, default_cache_dir

RATE = 12000.0
SHAFT = 29.95


def analyze_json(capsys, *args):
    assert main(["analyze", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_analyze_npy_prints_the_kernels_features(tmp_path, capsys):
    x = bearing_fault(RATE, 8192, SHAFT, 3.5848 * SHAFT, seed=6)
    np.save(tmp_path / "cap.npy", x)
    out = analyze_json(capsys, tmp_path / "cap.npy", "--rate", RATE, "--bearing", "6205", "--shaft-hz", SHAFT)
    f = out["features"]["x"]
    ref = time_features(x)
    assert f["kurtosis"] == pytest.approx(ref["kurtosis"], rel=1e-9)
    assert f["velocity_rms"] == pytest.approx(velocity_rms_mm_s(x, RATE), rel=1e-9)
    assert out["fault_hz"]["bpfo"] == pytest.approx(3.5848 * SHAFT, rel=1e-4)
    assert abs(f["env_peak_hz"] - out["fault_hz"]["bpfo"]) <= RATE / 8192
    assert (out["windows"], out["window"], out["samples"]) == (1, 8192, 8192)


def test_analyze_windows_of_a_csv_with_named_columns(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(size=4000), 3 * rng.normal(size=4000)], axis=1)
    np.savetxt(tmp_path / "cap.csv", x, delimiter=",", header="drive,fan", comments="")
    out = analyze_json(capsys, tmp_path / "cap.csv", "--rate", 3200, "--window", 1024, "--hop", 512,
                       "--per-window")
    assert out["axes"] == ["drive", "fan"] and out["windows"] == 6
    an = Analyzer({}, 3200.0, 1024)
    rms = [an.features(x[i:i + 1024], ("drive", "fan"), digits=None)["fan"]["rms"] for i in range(0, 2977, 512)]
    assert [w["fan"]["rms"] for w in out["per_window"]] == pytest.approx(rms, rel=1e-9)
    assert out["features"]["fan"]["rms"] == pytest.approx(np.mean(rms), rel=1e-9)


def test_analyze_a_16_bit_wav_uses_its_rate_and_full_scale(tmp_path, capsys):
    x = tone(8000.0, 8000, 100.0, 0.5)
    pcm = np.round(x * 32767).astype("<i2")
    with wave.open(str(tmp_path / "cap.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())
    out = analyze_json(capsys, tmp_path / "cap.wav")
    assert out["rate_hz"] == 8000.0
    assert out["features"]["x"]["rms"] == pytest.approx(0.5 / np.sqrt(2), rel=1e-4)
    assert out["features"]["x"]["dominant_hz"] == pytest.approx(100.0)


def test_analyze_table_and_errors(tmp_path, capsys):
    np.save(tmp_path / "cap.npy", tone(3200.0, 4096, 100.0, 1.0))
    assert main(["analyze", str(tmp_path / "cap.npy"), "--rate", "3200", "--bands", "0-200,200-1600"]) == 0
    text = capsys.readouterr().out
    assert "crest" in text and "band 200–1600 Hz" in text and "velocity_rms [mm/s]" in text
    (tmp_path / "cap.txt").write_text("1,2,3")
    assert main(["analyze", str(tmp_path / "cap.txt"), "--rate", "10"]) == 2
    assert "expected a .npy, .csv or .wav file" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "cap.npy")]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "cap.npy"), "--rate", "3200", "--features", '{"peaks": 500}']) == 2
    assert "features.peaks" in capsys.readouterr().err


def test_analyze_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "cap.npy", bearing_fault(RATE, 8192, SHAFT, 107.36))
    assert main(["analyze", str(tmp_path / "cap.npy"), "--rate", str(RATE), "--bearing", "6205",
                 "--shaft-hz", str(SHAFT), "--plot", str(tmp_path / "cap.png")]) == 0
    assert (tmp_path / "cap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_plot_without_matplotlib_says_what_to_install(tmp_path):
    np.save(tmp_path / "cap.npy", tone(3200.0, 1024, 100.0, 1.0))
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from agent.cli import main\n"
            f"sys.exit(main(['analyze', {str(tmp_path / 'cap.npy')!r}, '--rate', '3200', '--plot', 'x.png']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "edge-agent[plot]" in r.stderr


def test_every_setting_shares_one_kernel_signature():
    rng = np.random.default_rng(1)
    for settings, axes in [({}, 1), ({"bands": [[0, 10]], "peaks": 0, "velocity": False}, 3),
                           ({"bearing": "6205", "shaft_hz": 20}, 2), ({"envelope": {"band": [100, 900]}}, 1),
                           ({"sk": True, "accel_unit": "g", "iso": "group1_rigid"}, 1)]:
        Analyzer(settings, 3200.0, 512).compute(rng.normal(size=(512, axes)))
    assert len(kernels.analyze_window.signatures) == 1


def test_cache_directory_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edge-agent" / "numba"
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path / 'svc'}:{tmp_path / 'other'}")
    assert default_cache_dir() == tmp_path / "svc" / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    with pytest.raises(RuntimeError, match="after numba was imported"):
        configure_cache(tmp_path / "elsewhere")  # numba is imported in this process


def test_warmup_compiles_once_and_a_new_process_loads_every_kernel_from_the_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["CACHE_DIRECTORY"] = str(tmp_path / "svc")  # as systemd sets it for CacheDirectory=edge-agent

    def warmup():
        r = subprocess.run([sys.executable, "-m", "agent", "warmup", "--json"], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    cold = warmup()
    assert cold["cache_dir"] == str(tmp_path / "svc" / "numba")
    assert not any(k["from_cache"] for k in cold["kernels"])
    assert any((tmp_path / "svc" / "numba").rglob("*.nbi"))
    warm = warmup()
    assert all(k["from_cache"] for k in warm["kernels"])
    assert {k["kernel"] for k in warm["kernels"]} == {"analyze_window", "rms_peak", "envelope_spectrum",
                                                      "spectral_kurtosis"}


def test_analyze_with_the_settings_of_a_configured_sensor(tmp_path, capsys):
    (tmp_path / "agent.toml").write_text(
        '[agent]\nid = "t"\n[[sensors]]\nname = "pump"\ndriver = "emulated.vibration"\nrate_hz = 12000\n'
        'window = 4096\n[sensors.features]\nbearing = "6205"\nshaft_hz = 29.95\n'
        'envelope = { band = [2000, 4000] }\n')
    x = bearing_fault(RATE, 8192, SHAFT, 3.5848 * SHAFT, seed=6)
    np.save(tmp_path / "cap.npy", x)
    out = analyze_json(capsys, tmp_path / "cap.npy", "--config", tmp_path / "agent.toml", "--sensor", "pump")
    assert (out["rate_hz"], out["window"], out["windows"]) == (RATE, 4096, 2)
    assert out["features"]["x"]["env_band_hz"] == pytest.approx([2000, 4000], abs=RATE / 4096)
    assert main(["analyze", str(tmp_path / "cap.npy"), "--config", str(tmp_path / "agent.toml"),
                 "--sensor", "nope"]) == 2
    assert "no enabled sensor named 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("width", [1, 3, 4])
def test_read_pcm_wav_of_every_width_and_two_channels(tmp_path, width):
    from agent.cli.signal import read_waveform

    x = np.stack([tone(8000.0, 800, 100.0, 0.5), tone(8000.0, 800, 200.0, -0.25)], axis=1)
    full = float(1 << (8 * width - 1))
    ints = np.round(x * (full - 1)).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif width == 3:
        raw = (ints.reshape(-1, 1) & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = ints.astype("<i4").tobytes()
    with wave.open(str(tmp_path / "cap.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(width)
        w.setframerate(8000)
        w.writeframes(raw)
    got, rate, axes = read_waveform(tmp_path / "cap.wav")
    assert rate == 8000.0 and axes == ["x", "y"] and got.shape == (800, 2)
    np.testing.assert_allclose(got, x, atol=1.5 / full)
