"""`edge-agent capture SENSOR --seconds N [--out FILE.png]`: a raw window of a stream sensor, drawn as waveform,
spectrum and envelope spectrum with the bearing defect frequencies marked.

The window comes from the running service (through its status socket: the service owns the hardware, and the
capture is also stored as a `capture` record) or, when the service is not running, straight from the driver through
the HAL. The analysis is the signal core's: the Hann-windowed amplitude spectrum (`agent.signal.spectrum`) and the
envelope spectrum of the feature kernels (the sensor's `envelope.band`, or the "auto" band of highest spectral
kurtosis: the band the published features use); the bearing frequencies come from `agent.signal.bearings.geometry`
and the sensor's `features` table (`bearing`, `shaft_hz`), or from --bearing/--shaft-hz. Without --out, a text
plot.
"""

from __future__ import annotations

import argparse
import base64
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.cli.common import CliError, add_diag_args, config_for, find_service, state_dir_for, with_errors
from agent.signal.spectrum import amplitude_spectrum

MAX_SECONDS = 60.0


@dataclass
class Capture:
    sensor: str
    rate_hz: float
    unit: str
    axes: list[str]
    samples: np.ndarray  # (n, axes)
    t0_ns: int
    source: str


@dataclass
class Analysis:
    axis: str
    t: np.ndarray
    x: np.ndarray
    f: np.ndarray
    spectrum: np.ndarray
    env_f: np.ndarray
    env_spectrum: np.ndarray
    band: tuple[float, float]
    markers: dict[str, float] = field(default_factory=dict)  # name -> Hz
    shaft_hz: float = 0.0
    rms: float = 0.0
    peak: float = 0.0


# -- acquisition ----------------------------------------------------------------------------------------------------

def from_service(path: Path, sensor: str, seconds: float) -> Capture:
    from agent.service import request
    try:
        answer = request(path, {"cmd": "capture", "sensor": sensor, "seconds": seconds}, timeout=seconds * 2 + 20)
    except (OSError, ValueError) as e:
        raise CliError(f"the running service did not answer the capture request ({path}): {e}") from None
    if "error" in answer:
        raise CliError(f"the running service refused the capture: {answer['error']}", 2)
    p = answer["capture"]
    if p.get("encoding") != "f32le-base64":
        raise CliError(f"unknown capture encoding {p.get('encoding')!r} from the service")
    cols = [np.frombuffer(base64.b64decode(p["data"][a]), dtype="<f4").astype(float) for a in p["axes"]]
    from datetime import datetime
    t0 = int(datetime.strptime(answer["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp() * 1e9) if answer.get("ts") else 0
    return Capture(sensor, float(p["rate_hz"]), p.get("unit", ""), list(p["axes"]), np.stack(cols, axis=1), t0,
                   "service")


def from_driver(config: Any, sensor_cfg: Any, seconds: float) -> Capture:
    from hal.sources import HalContext, open_source
    context = HalContext(emulate=config.emulate, buses=config.buses)
    result: dict[str, Any] = {}
    deadline_s = seconds * 2 + 5

    def run() -> None:
        try:
            src = open_source(sensor_cfg.driver, sensor_cfg.name, sensor_cfg.options, context, bus=sensor_cfg.bus)
            src.open()
            try:
                blocks = []
                need = int(round(seconds * src.rate_hz))  # type: ignore[union-attr]
                have = 0
                deadline = time.monotonic() + deadline_s
                while have < need and time.monotonic() < deadline:
                    b = src.read_block(timeout=0.5)  # type: ignore[union-attr]
                    if b is None:
                        continue
                    if b.gap and blocks:  # a window is contiguous: start again after lost samples
                        blocks, have = [], 0
                    blocks.append(b)
                    have += len(b)
                result["blocks"] = blocks
                result["need"] = need
            finally:
                src.close()
        except Exception as e:
            result["error"] = e

    t = threading.Thread(target=run, name="capture", daemon=True)
    t.start()
    t.join(deadline_s + 2)
    context.close()
    if t.is_alive():
        raise CliError(f"{sensor_cfg.name}: the driver did not deliver within {deadline_s:g} s (stuck?); "
                        "`edge-agent doctor` checks the device")
    if "error" in result:
        e = result["error"]
        raise CliError(f"{sensor_cfg.name}: {type(e).__name__}: {e}; `edge-agent doctor` checks the device")
    blocks, need = result["blocks"], result["need"]
    have = sum(len(b) for b in blocks)
    if have < need:
        raise CliError(f"{sensor_cfg.name}: only {have} of {need} samples within {deadline_s:g} s")
    data = np.concatenate([b.samples.reshape(len(b), -1) for b in blocks])[:need].astype(float)
    first = blocks[0]
    return Capture(sensor_cfg.name, float(first.rate_hz), first.unit, list(first.axes), data, first.t0_ns, "driver")


# -- analysis -------------------------------------------------------------------------------------------------------

def envelope_spectrum(x: np.ndarray, rate: float, features: Any) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The envelope spectrum as the feature kernels compute it (agent.signal.analyzer): the sensor's
    `features.envelope.band`, or "auto" (the band of highest spectral kurtosis), so the plot shows what the published
    `bpfo`/`bpfi`/... were computed from. (frequencies, amplitudes, (lo, hi) Hz); empty when the window is too short
    for an "auto" band."""
    from agent.signal.cache import configure_cache
    try:
        configure_cache()  # before Numba is imported: the service's compiled kernels
    except (OSError, RuntimeError):
        pass  # compiled in this process instead (or a caller configured it already)
    from agent.signal import layout
    from agent.signal.analyzer import Analyzer
    from agent.signal.kernels import envelope_spectrum as kernel

    feats = dict(features or {})
    env = feats.get("envelope")
    feats["envelope"] = dict(env) if isinstance(env, dict) else {}  # the envelope on, whatever the config says
    n = len(x)
    try:
        analyzer = Analyzer(feats, rate, n)
    except ValueError as e:
        raise CliError(f"features: {e}", 2) from None
    row = analyzer.compute(np.ascontiguousarray(x, dtype=np.float64))[0]
    lo, hi = float(row[layout.ENV_LO_HZ]), float(row[layout.ENV_HI_HZ])
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        return np.zeros(0), np.zeros(0), (0.0, 0.0)
    df = rate / n
    spec = np.fft.rfft(analyzer.window * (x - x.mean()))
    _, amp = kernel(spec, int(round(lo / df)), int(round(hi / df)), analyzer.env_m, n)
    return np.arange(len(amp)) * df, amp, (lo, hi)


def bearing_markers(features: Any, bearing: str | None, shaft_hz: float | None) -> tuple[dict[str, float], float]:
    from agent.signal import bearings
    feats = dict(features or {})
    spec = bearing or feats.get("bearing") or ""
    shaft = shaft_hz if shaft_hz is not None else float(feats.get("shaft_hz") or 0.0)
    if not spec or shaft <= 0:
        return {}, shaft
    try:
        geometry = bearings.geometry(spec)
    except (ValueError, KeyError, TypeError) as e:
        raise CliError(f"bearing: {e}", 2) from None
    return geometry.frequencies(shaft), shaft


def analyse(cap: Capture, axis: str | None, features: Any, bearing: str | None, shaft_hz: float | None) -> Analysis:
    if axis is None:
        k = 0
    elif axis in cap.axes:
        k = cap.axes.index(axis)
    else:
        raise CliError(f"--axis: expected one of {', '.join(cap.axes)}, got {axis!r}", 2)
    x = cap.samples[:, k]
    rate = cap.rate_hz
    f, spec = amplitude_spectrum(x, rate)
    markers, shaft = bearing_markers(features, bearing, shaft_hz)
    ef, espec, band = envelope_spectrum(x, rate, features)
    return Analysis(cap.axes[k], np.arange(len(x)) / rate, x, f, spec, ef, espec, band, markers, shaft,
                    float(np.sqrt(np.mean((x - x.mean()) ** 2))), float(np.max(np.abs(x))))


# -- output ---------------------------------------------------------------------------------------------------------

WIDTH, HEIGHT = 1000, 900
LEFT, PANEL_W, PANEL_H = 80, 900, 200
TOPS = (84, 374, 664)


def envelope_fmax(a: Analysis, rate: float) -> float:
    top = max(a.markers.values()) if a.markers else 0.0
    return min(rate / 2, max(200.0, 5 * top))


def spectrum_fmax(rate: float) -> float:
    return rate / 2


def draw(cap: Capture, a: Analysis, path: Path) -> dict[str, Any]:
    """Render the three panels to a PNG; returns the panels (data-to-pixel mappings) for whoever wants them."""
    from agent.cli.plot import MARKERS, Canvas, Panel, write_png
    c = Canvas(WIDTH, HEIGHT)
    unit = cap.unit or "units"
    c.text(LEFT, 8, f"{cap.sensor} axis {a.axis}: {len(a.x)} samples at {cap.rate_hz:g} Hz, rms {a.rms:.3g}, "
                    f"peak {a.peak:.3g} {unit}", scale=2)
    c.text(LEFT, 32, f"captured from the {cap.source}" + (f"; shaft {a.shaft_hz:g} Hz" if a.shaft_hz else ""))
    lim = max(float(np.max(np.abs(a.x))), 1e-12) * 1.05
    wave = Panel(c, LEFT, TOPS[0], PANEL_W, PANEL_H, 0.0, float(a.t[-1]) if len(a.t) > 1 else 1.0, -lim, lim)
    wave.frame("waveform", "time s", unit)
    wave.trace(a.t, a.x)

    fmax = spectrum_fmax(cap.rate_hz)
    sel = a.f <= fmax
    spec = Panel(c, LEFT, TOPS[1], PANEL_W, PANEL_H, 0.0, fmax, 0.0, max(float(a.spectrum[sel].max()), 1e-12) * 1.1)
    spec.frame("spectrum", "frequency Hz", unit)
    spec.trace(a.f[sel], a.spectrum[sel])
    if a.shaft_hz:
        spec.marker(a.shaft_hz, "1X", MARKERS["1x"])

    efmax = envelope_fmax(a, cap.rate_hz)
    esel = (a.env_f <= efmax) & (a.env_f > 0)
    env = Panel(c, LEFT, TOPS[2], PANEL_W, PANEL_H, 0.0, efmax, 0.0,
                max(float(a.env_spectrum[esel].max()) if esel.any() else 0.0, 1e-12) * 1.1)
    env.frame(f"envelope spectrum, band {a.band[0]:.0f}-{a.band[1]:.0f} Hz", "frequency Hz", unit)
    env.trace(a.env_f[esel], a.env_spectrum[esel])
    for row, (name, hz) in enumerate(sorted(a.markers.items(), key=lambda kv: kv[1])):
        env.marker(hz, f"{name.upper()} {hz:.1f}", MARKERS.get(name, (0, 0, 0)), row)
    if not a.markers:
        c.text(LEFT + 4, TOPS[2] + 4, "no bearing frequencies: set features.bearing and shaft_hz, or --bearing "
                                      "and --shaft-hz", (120, 120, 120))
    write_png(path, c.pixels)
    return {"waveform": wave, "spectrum": spec, "envelope": env}


def _peaks(f: np.ndarray, s: np.ndarray, n: int = 5) -> list[tuple[float, float]]:
    if len(s) < 3:
        return []
    inner = (s[1:-1] > s[:-2]) & (s[1:-1] >= s[2:])
    idx = np.nonzero(inner)[0] + 1
    idx = idx[np.argsort(s[idx])[::-1][:n]]
    return [(float(f[i]), float(s[i])) for i in sorted(idx, key=lambda i: -s[i])]


def _spark(y: np.ndarray, width: int = 72) -> str:
    bars = " ▁▂▃▄▅▆▇█"
    if len(y) == 0:
        return ""
    edges = np.linspace(0, len(y), width + 1).astype(int)
    cols = np.array([y[a:max(b, a + 1)].max() for a, b in zip(edges[:-1], edges[1:])])
    top = cols.max() or 1.0
    return "".join(bars[int(round(v / top * 8))] for v in cols)


def text_plot(cap: Capture, a: Analysis) -> str:
    unit = cap.unit or ""
    lines = [f"{cap.sensor} axis {a.axis}: {len(a.x)} samples at {cap.rate_hz:g} Hz from the {cap.source}; "
             f"rms {a.rms:.4g} {unit}, peak {a.peak:.4g} {unit}"]
    lim = float(np.max(np.abs(a.x))) or 1.0
    lines.append(f"waveform |x| (0 … {a.t[-1]:.2f} s, top {lim:.3g} {unit})")
    lines.append("  " + _spark(np.abs(a.x)))
    fmax = spectrum_fmax(cap.rate_hz)
    sel = a.f <= fmax
    lines.append(f"spectrum (0 … {fmax:g} Hz)")
    lines.append("  " + _spark(a.spectrum[sel]))
    lines.append("  peaks: " + ", ".join(f"{f:.1f} Hz {v:.3g}" for f, v in _peaks(a.f[sel], a.spectrum[sel])))
    efmax = envelope_fmax(a, cap.rate_hz)
    esel = (a.env_f <= efmax) & (a.env_f > 0)
    lines.append(f"envelope spectrum (band {a.band[0]:.0f}-{a.band[1]:.0f} Hz; 0 … {efmax:g} Hz)")
    lines.append("  " + _spark(a.env_spectrum[esel]))
    if a.markers:
        df = a.env_f[1] - a.env_f[0] if len(a.env_f) > 1 else 1.0
        for name, hz in sorted(a.markers.items(), key=lambda kv: kv[1]):
            near = (a.env_f >= hz * 0.98 - df) & (a.env_f <= hz * 1.02 + df)
            amp = float(a.env_spectrum[near].max()) if near.any() else float("nan")
            lines.append(f"  {name.upper():<4} {hz:8.2f} Hz  envelope amplitude {amp:.3g} {unit}")
    else:
        lines.append("  no bearing frequencies: set features.bearing and shaft_hz, or --bearing and --shaft-hz")
    return "\n".join(lines)


def cmd_capture(args: argparse.Namespace) -> int:
    if not 0 < args.seconds <= MAX_SECONDS:
        raise CliError(f"--seconds: expected more than 0 and at most {MAX_SECONDS:g}, got {args.seconds:g}", 2)
    if args.shaft_hz is not None and args.shaft_hz <= 0:
        raise CliError(f"--shaft-hz: expected a positive number, got {args.shaft_hz:g}", 2)
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.suffix.lower() != ".png":
            raise CliError(f"--out: expected a file name ending in .png, got {out}", 2)
        if not out.parent.exists():
            raise CliError(f"--out: directory {out.parent} does not exist", 2)
    config = config_for(args, required=True)
    assert config is not None
    sensor = next((s for s in config.sensors if s.name == args.sensor), None)
    streams = [s.name for s in config.sensors if s.kind == "stream"]
    if sensor is None or sensor.kind != "stream":
        what = "a slow sensor (capture needs a stream sensor)" if sensor is not None else "not configured"
        raise CliError(f"{args.sensor!r} is {what}; stream sensors in {config.source}: "
                        f"{', '.join(streams) or 'none'}", 2)
    state_dir = state_dir_for(args, config)
    path, doc = (None, None) if args.direct else find_service(args, state_dir)
    if doc is not None and path is not None:
        cap = from_service(path, sensor.name, args.seconds)
    else:
        cap = from_driver(config, sensor, args.seconds)
    a = analyse(cap, args.axis, sensor.features, args.bearing, args.shaft_hz)
    if out is not None:
        draw(cap, a, out)
        print(f"wrote {out} ({WIDTH}x{HEIGHT}): {len(a.x)} samples of {cap.sensor} axis {a.axis} at "
              f"{cap.rate_hz:g} Hz from the {cap.source}"
              + (f"; marked {', '.join(f'{k.upper()} {v:.1f} Hz' for k, v in sorted(a.markers.items()))}"
                 if a.markers else ""))
    else:
        print(text_plot(cap, a))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture", help="record a raw window of a stream sensor: waveform, spectrum, envelope spectrum",
                       description="Records N seconds of raw samples (from the running service, else straight from "
                                   "the driver) and draws waveform, spectrum and envelope spectrum with the bearing "
                                   "defect frequencies marked: a PNG with --out, a text plot without.")
    add_diag_args(p, socket=True)
    p.add_argument("sensor", metavar="SENSOR", help="a stream sensor's name from the config")
    p.add_argument("--seconds", "-s", type=float, default=1.0, metavar="N", help="window length (default 1 s)")
    p.add_argument("--out", "-o", metavar="FILE.png", help="write a PNG (default: a text plot)")
    p.add_argument("--axis", metavar="NAME", help="which axis (default: the first)")
    p.add_argument("--bearing", metavar="PRESET", help="bearing preset, overriding the sensor's features.bearing")
    p.add_argument("--shaft-hz", type=float, metavar="HZ", help="shaft speed, overriding features.shaft_hz")
    p.add_argument("--direct", action="store_true", help="open the driver even if the service is running")
    p.set_defaults(func=with_errors(cmd_capture))
