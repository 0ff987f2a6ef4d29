"""`edge-agent capture`: a raw window from an emulated accelerometer drawn as a PNG (checked byte by byte and
pixel by pixel: the shaft peak where the plant puts it, the bearing markers where the geometry puts them), from
the driver and from a running service; a text plot without --out; every bad input refused with a clear message."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main
from agent.cli.capture import LEFT, PANEL_H, PANEL_W, TOPS, HEIGHT, WIDTH
from agent.cli.plot import MARKERS, TRACE
from agent.signal.bearings import preset

CONFIG = """
[agent]
id = "cap"

[mqtt]
url = "mqtt://127.0.0.1:{port}"

[[sensors]]
name = "spindle"
driver = "emulated.vibration"
rate_hz = 3200
block_size = 320
axes = ["x", "y"]
window = 3200
features = {{ bearing = "6205", shaft_hz = 24.75 }}

[[sensors]]
name = "temp"
driver = "emulated.temperature"
"""


def read_png(path: Path) -> np.ndarray:
    """A strict reader for what we write: signature, chunk CRCs, 8-bit RGB, filter 0 rows."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, tag
        chunks[tag] = chunks.get(tag, b"") + body
        pos += 12 + length
    assert tag == b"IEND"
    w, h, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, ctype, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(h, w * 3 + 1)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def _mask(img: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    return (img == np.array(color, dtype=np.uint8)).all(axis=2)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    from tests.mqtt_helpers import free_port
    p = tmp_path / "agent.toml"
    p.write_text(CONFIG.format(port=free_port()))
    return p


def _args(tmp_path: Path, config: Path, *extra: str) -> list[str]:
    return ["capture", "--config", str(config), "--state-dir", str(tmp_path / "state"), "--socket",
            str(tmp_path / "none.sock"), *extra]


def test_png_shows_the_shaft_peak_and_the_bearing_frequencies(tmp_path: Path, config: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "spindle.png"
    assert main(_args(tmp_path, config, "spindle", "--seconds", "2", "--out", str(out))) == 0
    said = capsys.readouterr().out
    assert f"wrote {out} (1000x900): 6400 samples of spindle axis x at 3200 Hz from the driver" in said
    assert 10_000 < out.stat().st_size < 500_000
    img = read_png(out)
    assert img.shape == (HEIGHT, WIDTH, 3)
    trace = _mask(img, TRACE)

    wave = trace[TOPS[0]:TOPS[0] + PANEL_H, LEFT:LEFT + PANEL_W]
    assert wave.any(axis=0).mean() > 0.99  # the waveform spans the panel
    assert wave.any(axis=1).mean() > 0.5  # and swings over much of its height

    spec = trace[TOPS[1]:TOPS[1] + PANEL_H, LEFT:LEFT + PANEL_W]
    rows = np.where(spec.any(axis=0), spec.argmax(axis=0), PANEL_H)  # topmost trace pixel per column
    col = int(rows.argmin())
    hz_per_px = 1600.0 / (PANEL_W - 1)
    assert abs(col * hz_per_px - 24.75) <= 2 * hz_per_px  # the plant's imbalance at shaft speed dominates

    freqs = preset("6205").frequencies(24.75)
    fmax = max(200.0, 5 * max(freqs.values()))
    for name, hz in freqs.items():
        x = LEFT + int(round(hz / fmax * (PANEL_W - 1)))
        column = _mask(img, MARKERS[name])[TOPS[2]:TOPS[2] + PANEL_H, x]
        assert column.sum() > PANEL_H // 3, name  # a dashed line the height of the envelope panel
        elsewhere = _mask(img, MARKERS[name])[TOPS[2]:TOPS[2] + PANEL_H, x + 20]
        assert elsewhere.sum() < PANEL_H // 10, name  # and not a smear across it


def test_text_plot_without_out(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(tmp_path, config, "spindle", "--seconds", "1", "--axis", "y")) == 0
    out = capsys.readouterr().out
    assert out.startswith("spindle axis y: 3200 samples at 3200 Hz from the driver; rms ")
    peaks = next(line for line in out.splitlines() if line.strip().startswith("peaks:"))
    assert peaks.strip().startswith("peaks: 25.0 Hz")
    for name, hz in preset("6205").frequencies(24.75).items():
        assert f"{name.upper():<4} {hz:8.2f} Hz" in out


@pytest.mark.parametrize("argv, message", [
    (["nope"], "'nope' is not configured; stream sensors in"),
    (["temp"], "'temp' is a slow sensor (capture needs a stream sensor); stream sensors in"),
    (["spindle", "--seconds", "0"], "--seconds: expected more than 0 and at most 60, got 0"),
    (["spindle", "--out", "x.jpg"], "--out: expected a file name ending in .png, got x.jpg"),
    (["spindle", "--out", "/no/such/dir/x.png"], "--out: directory /no/such/dir does not exist"),
    (["spindle", "--axis", "q", "--seconds", "0.2"], "--axis: expected one of x, y, got 'q'"),
    (["spindle", "--bearing", "6999", "--seconds", "0.2"], "bearing: expected a bearing preset"),
])
def test_bad_input_is_refused_with_a_clear_message(tmp_path: Path, config: Path, argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(tmp_path, config, *argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-agent capture: ") and message in err


def test_capture_from_the_running_service(broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.pipeline import Pipeline
    if not hasattr(Pipeline, "request_capture"):
        pytest.skip("Pipeline.request_capture not available in this tree")
    from agent.config import load
    from agent.service import Service
    from tests.agent_helpers import run_agent, wait
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG.format(port=broker.port))
    agent = run_agent(load(cfg, emulate=True), tmp_path / "state")
    sock = tmp_path / "status.sock"
    service = Service(agent, status_socket=sock, environ={})
    service.ready()
    try:
        out = tmp_path / "svc.png"
        assert main(["capture", "--config", str(cfg), "--socket", str(sock), "spindle", "--seconds", "0.5",
                     "--out", str(out)]) == 0
        assert "1600 samples of spindle axis x at 3200 Hz from the service" in capsys.readouterr().out
        assert read_png(out).shape == (HEIGHT, WIDTH, 3)
        assert wait(lambda: agent.outbox.next_seq("spindle.capture") == 1)  # stored and published like any record
    finally:
        service.stopping()
        agent.stop(drain_s=0.5)
