"""Signal subcommands: `edge-agent analyze FILE` (offline features of a capture) and `edge-agent warmup`.

Both set the Numba cache directory (`agent.signal.cache.configure_cache`) before any kernel module is imported,
so they use the same cache as the service. matplotlib is needed only for `analyze --plot` and imported there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from agent.signal import bearings, iso
from agent.signal.schema import validate_features


class InputError(ValueError):
    """The waveform file cannot be read."""


def read_waveform(path: str | Path, rate_hz: float | None = None) -> tuple[np.ndarray, float, list[str]]:
    """Samples (n, axes) as float64, the sample rate and axis names from a .npy, .csv or .wav file.

    .npy: 1-D, or 2-D with one column per axis. .csv: one column per axis, an optional header row of names.
    .wav: PCM 8/16/24/32-bit, one channel per axis, scaled to ±1 full scale; its rate unless --rate is given.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    names: list[str] = []
    try:
        if suffix == ".npy":
            data = np.load(p, allow_pickle=False)
        elif suffix == ".csv":
            with p.open(encoding="utf-8") as f:
                first = f.readline()
            cells = [c.strip() for c in first.split(",")]
            try:
                [float(c) for c in cells]
                skip = 0
            except ValueError:
                names, skip = cells, 1
            data = np.loadtxt(p, delimiter=",", skiprows=skip, ndmin=2)
        elif suffix == ".wav":
            data, file_rate = _read_wav(p)
            rate_hz = rate_hz or file_rate
        else:
            raise InputError(f"{p}: expected a .npy, .csv or .wav file")
    except OSError as e:
        raise InputError(f"{p}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{p}: not a readable waveform: {e}") from None
    data = np.asarray(data)
    if data.dtype.kind not in "fiu" or data.ndim not in (1, 2) or data.size == 0:
        raise InputError(f"{p}: expected a non-empty 1-D or 2-D numeric array, got {data.dtype} {data.shape}")
    x = np.ascontiguousarray(data.reshape(data.shape[0], -1), dtype=np.float64)
    if not rate_hz or rate_hz <= 0:
        raise InputError(f"{p}: the sample rate is needed: --rate HZ")
    if len(names) != x.shape[1]:
        names = ["x", "y", "z"][: x.shape[1]] if x.shape[1] <= 3 else [f"ch{k}" for k in range(x.shape[1])]
    return x, float(rate_hz), names


def _read_wav(p: Path) -> tuple[np.ndarray, float]:
    try:
        with wave.open(str(p), "rb") as w:
            width, channels, rate, frames = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise InputError(f"{p}: not a PCM WAV file ({e}); convert floating-point WAV to .npy") from None
    if width == 1:
        data = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        v = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].astype(np.int32) << 16))
        data = np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)
    elif width in (2, 4):
        data = np.frombuffer(raw, f"<i{width}").astype(np.float64) / float(1 << (8 * width - 1))
    else:
        raise InputError(f"{p}: unsupported sample width {width} bytes")
    return data.reshape(-1, channels), float(rate)


def _geometry(text: str) -> dict[str, Any]:
    try:
        parts = [float(v) for v in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError("expected BALLS,BALL_DIAMETER,PITCH_DIAMETER[,CONTACT_ANGLE_DEG]")
    g = {"balls": int(parts[0]), "ball_diameter": parts[1], "pitch_diameter": parts[2]}
    if len(parts) == 4:
        g["contact_angle"] = parts[3]
    return g


def _bands(text: str) -> list[list[float]]:
    try:
        out = [[float(v) for v in b.split("-")] for b in text.split(",") if b]
    except ValueError:
        out = []
    if not out or any(len(b) != 2 for b in out):
        raise argparse.ArgumentTypeError("expected bands like 10-100,100-1000")
    return out


def sensor_from_config(path: str, name: str) -> tuple[dict[str, Any], int, float | None]:
    """The features table, window and rate of sensor `name` in a config file, to analyse a capture as the agent
    would."""
    from agent.config import load

    config = load(path)
    for s in config.sensors:
        if s.name == name:
            rate = s.options.get("rate_hz")
            return dict(s.features), s.window, float(rate) if rate else None
    raise InputError(f"{path}: no enabled sensor named {name!r} (sensors: "
                     f"{', '.join(s.name for s in config.sensors) or 'none'})")


def features_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    f: dict[str, Any] = dict(base or {})
    if args.features:
        f.update(json.loads(args.features))
    if args.bands:
        f["bands"] = args.bands
    if args.peaks is not None:
        f["peaks"] = args.peaks
    if args.iso:
        f["iso"] = args.iso
    if args.accel_unit:
        f["accel_unit"] = args.accel_unit
    if args.bearing:
        f["bearing"] = args.bearing
    if args.bearing_geometry:
        f["bearing"] = args.bearing_geometry
    if args.shaft_hz:
        f["shaft_hz"] = args.shaft_hz
    if args.envelope_band:
        env = dict(f.get("envelope") or {})
        env["band"] = "auto" if args.envelope_band == ["auto"] else [float(v) for v in args.envelope_band]
        f["envelope"] = env
    if args.sk:
        f["sk"] = True
    return f


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def summarise(windows: list[dict[str, dict[str, Any]]], zone_limits: Any) -> dict[str, dict[str, Any]]:
    """The mean of each numeric feature over the windows (bands element-wise); peaks from single windows only."""
    if len(windows) == 1:
        return windows[0]
    out: dict[str, dict[str, Any]] = {}
    for axis in windows[0]:
        rows = [w[axis] for w in windows]
        s: dict[str, Any] = {}
        for key, v in rows[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                s[key] = float(np.nanmean([r[key] for r in rows])) if any(
                    math.isfinite(r[key]) for r in rows) else math.nan
            elif key in ("bands", "env_band_hz"):
                s[key] = [float(c) for c in np.mean([r[key] for r in rows], axis=0)]
        if "velocity_rms" in s and zone_limits:
            s["zone"] = iso.zone(s["velocity_rms"], zone_limits)
        out[axis] = s
    return out


def analyze_file(path: str, rate_hz: float | None, window: int | None, hop: int | None,
                 features: dict[str, Any]) -> dict[str, Any]:
    """Features of a capture: per window and their summary (a JSON-ready dict)."""
    from agent.signal.analyzer import Analyzer

    x, rate, axes = read_waveform(path, rate_hz)
    n = window or x.shape[0]
    if n > x.shape[0]:
        raise InputError(f"{path}: the window ({n}) is longer than the capture ({x.shape[0]} samples)")
    step = hop or n
    an = Analyzer(features, rate, n)
    shaft = features.get("shaft_hz") or None
    windows = [an.features(x[i:i + n], axes, shaft, digits=None) for i in range(0, x.shape[0] - n + 1, step)]
    result: dict[str, Any] = {"file": str(path), "rate_hz": rate, "samples": int(x.shape[0]), "axes": axes,
                              "window": n, "hop": step, "windows": len(windows)}
    result.update(an.context(shaft))
    result["features"] = summarise(windows, an.zone_limits)
    result["per_window"] = windows
    return _clean(result)


ORDER = ("mean", "rms", "peak", "p2p", "crest", "skewness", "kurtosis", "shape", "impulse", "clearance",
         "dominant_hz", "velocity_rms", "zone", "sk_max", "sk_max_hz", "env_band_hz", "env_rms", "env_peak_hz",
         "bpfo", "bpfi", "bsf", "ftf", "bpfi_sb")
UNITS = {"dominant_hz": "Hz", "velocity_rms": "mm/s", "sk_max_hz": "Hz", "env_band_hz": "Hz",
         "env_peak_hz": "Hz"}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.5g}"
    if isinstance(v, list):
        return "–".join(_fmt(c) for c in v) if len(v) == 2 and not isinstance(v[0], list) else \
            ", ".join(_fmt(c) for c in v)
    return str(v)


def table(result: dict[str, Any]) -> str:
    feats = result["features"]
    axes = list(feats)
    lines = [f"{result['file']}: {result['samples']} samples at {result['rate_hz']:g} Hz, "
             f"{result['windows']} window(s) of {result['window']} (hop {result['hop']})"]
    if "fault_hz" in result:
        lines.append(f"shaft {result['shaft_hz']:g} Hz; defect frequencies: " +
                     ", ".join(f"{k.upper()} {v:g} Hz" for k, v in result["fault_hz"].items()))
    rows: list[tuple[str, list[str]]] = []
    keys = [k for k in ORDER if k in feats[axes[0]]]
    for k in keys:
        label = f"{k} [{UNITS[k]}]" if k in UNITS else k
        rows.append((label, [_fmt(feats[a].get(k)) for a in axes]))
    for b, (lo, hi) in enumerate(result.get("bands_hz", [])):
        rows.append((f"band {lo:g}–{hi:g} Hz", [_fmt(feats[a]["bands"][b]) for a in axes]))
    if "peaks" in feats[axes[0]]:
        for j in range(max(len(feats[a]["peaks"]) for a in axes)):
            rows.append((f"peak {j + 1} [Hz: amp]", [
                f"{feats[a]['peaks'][j][0]:.5g}: {feats[a]['peaks'][j][1]:.4g}" if j < len(feats[a]["peaks"])
                else "-" for a in axes]))
    w0 = max(len(r[0]) for r in rows)
    widths = [max(len(a), *(len(r[1][i]) for r in rows)) for i, a in enumerate(axes)]
    lines.append(" " * w0 + "  " + "  ".join(a.rjust(w) for a, w in zip(axes, widths)))
    for label, cells in rows:
        lines.append(label.ljust(w0) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def plot(path: str, rate_hz: float | None, window: int | None, features: dict[str, Any], out: str) -> None:
    """PNG of the waveform, amplitude spectrum and envelope spectrum of the first window of the first axis."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib, which is not installed: pip install 'edge-agent[plot]'") from None
    from agent.signal import kernels
    from agent.signal.analyzer import Analyzer

    x, rate, axes = read_waveform(path, rate_hz)
    n = window or x.shape[0]
    f = dict(features)
    if not f.get("envelope"):
        f["envelope"] = {"band": "auto"}
    an = Analyzer(f, rate, n)
    row = an.compute(x[:n, :1], f.get("shaft_hz") or None)[0]
    from agent.signal import layout
    lo, hi = row[layout.ENV_LO_HZ], row[layout.ENV_HI_HZ]
    s = x[:n, 0]
    spec = np.fft.rfft(an.window * (s - s.mean()))
    amp = 2 * np.abs(spec) / an.sum_w
    fig, ax = plt.subplots(3, 1, figsize=(10, 9))
    ax[0].plot(np.arange(n) / rate, s, lw=0.5)
    ax[0].set(title=f"{Path(path).name}: axis {axes[0]}", xlabel="s")
    ax[1].semilogy(np.arange(len(amp)) * rate / n, amp, lw=0.6)
    ax[1].set(title="amplitude spectrum (Hann)", xlabel="Hz")
    if math.isfinite(lo):
        ax[1].axvspan(lo, hi, color="orange", alpha=0.2, label="envelope band")
        _, eamp = kernels.envelope_spectrum(spec, int(round(lo / an.df)), int(round(hi / an.df)), an.env_m, n)
        fe = np.arange(len(eamp)) * rate / n
        ax[2].plot(fe[2:], eamp[2:], lw=0.7)
        ax[2].set(title=f"envelope spectrum, band {lo:.0f}–{hi:.0f} Hz", xlabel="Hz")
        shaft = f.get("shaft_hz")
        if shaft and an.orders:
            for k, c in zip(bearings.FAULTS, ("r", "g", "m", "c")):
                ax[2].axvline(an.orders[k] * shaft, color=c, ls="--", lw=0.8, label=k.upper())
            ax[2].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def cmd_analyze(args: argparse.Namespace) -> int:
    from agent.signal.cache import configure_cache

    try:
        configure_cache(args.cache_dir)
    except (OSError, RuntimeError) as e:
        print(f"edge-agent analyze: cache: {e}", file=sys.stderr)
    base: dict[str, Any] = {}
    if args.config or args.sensor:
        if not (args.config and args.sensor):
            print("edge-agent analyze: --config and --sensor go together", file=sys.stderr)
            return 2
        from agent.errors import ConfigError
        try:
            base, window, rate = sensor_from_config(args.config, args.sensor)
        except (ConfigError, InputError) as e:
            print(f"edge-agent analyze: {e}", file=sys.stderr)
            return 2
        args.window = args.window or window
        args.rate = args.rate or rate
    try:
        features = features_from_args(args, base)
    except ValueError as e:
        print(f"edge-agent analyze: --features: expected a JSON object: {e}", file=sys.stderr)
        return 2
    _, errors = validate_features("stream", features)
    if errors:
        for k, m in errors:
            print(f"edge-agent analyze: features.{k}: {m}", file=sys.stderr)
        return 2
    try:
        result = analyze_file(args.file, args.rate, args.window, args.hop, features)
        if args.plot:
            plot(args.file, args.rate, args.window, features, args.plot)
    except (InputError, ValueError) as e:
        print(f"edge-agent analyze: {e}", file=sys.stderr)
        return 2
    if not args.per_window:
        result.pop("per_window")
    if args.json:
        print(json.dumps(result, allow_nan=False))
    else:
        print(table(result))
    return 0


def cmd_warmup(args: argparse.Namespace) -> int:
    from agent.signal.cache import configure_cache

    t0 = time.perf_counter()
    try:
        cache = configure_cache(args.cache_dir)
    except (OSError, RuntimeError) as e:
        print(f"edge-agent warmup: cannot use the cache directory: {e}", file=sys.stderr)
        return 1
    from agent.signal.warmup import warmup

    done = warmup()
    total = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"cache_dir": str(cache), "seconds": round(total, 3), "kernels": [
            {"kernel": d.kernel, "seconds": round(d.seconds, 3), "from_cache": d.from_cache,
             "signatures": d.signatures} for d in done]}))
    else:
        print(f"numba cache: {cache}")
        for d in done:
            how = "loaded from cache" if d.from_cache else "compiled and cached"
            print(f"  {d.kernel:<20} {how:<20} {d.seconds:7.3f} s  ({d.signatures} signature(s))")
        print(f"ready in {total:.2f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("analyze", help="compute the features of a waveform file (.npy, .csv, .wav)",
                       description="Offline condition-monitoring features of a capture: the same kernels as the "
                                   "agent. Without --window the whole file is one window.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  edge-agent analyze capture.npy --rate 25600 --iso group2_rigid\n"
                              "  edge-agent analyze de.csv --rate 12000 --bearing 6205 --shaft-hz 29.95 --json\n"
                              "  edge-agent analyze pump.wav --window 4096 --hop 2048 --plot pump.png\n"
                              "  edge-agent analyze cap.npy --config /etc/edge-agent/agent.toml --sensor pump_de")
    p.add_argument("file", help="waveform: .npy (n or n×axes), .csv (a column per axis), .wav (PCM)")
    p.add_argument("--rate", type=float, metavar="HZ", help="sample rate (a .wav file carries its own)")
    p.add_argument("--window", type=int, metavar="N", help="samples per window (default: the whole file)")
    p.add_argument("--hop", type=int, metavar="N", help="samples between windows (default: the window)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bearing", metavar="NAME", help=f"bearing preset ({', '.join(sorted(bearings.PRESETS))})")
    g.add_argument("--bearing-geometry", type=_geometry, metavar="N,d,D[,ANGLE]",
                   help="rolling elements, ball and pitch diameter (same unit), contact angle in degrees")
    p.add_argument("--shaft-hz", type=float, metavar="F", help="shaft speed in Hz (for the defect frequencies)")
    p.add_argument("--envelope-band", nargs="+", metavar="LO HI|auto",
                   help="envelope band-pass in Hz, or auto (spectral kurtosis; default with a bearing)")
    p.add_argument("--bands", type=_bands, metavar="LO-HI,...", help="bands whose energies are reported")
    p.add_argument("--peaks", type=int, metavar="N", help="spectral peaks reported (default 5)")
    p.add_argument("--iso", choices=sorted(iso.PRESETS), help="ISO 10816-3 zone preset")
    p.add_argument("--accel-unit", choices=("m/s2", "g"), help="unit of the samples (default m/s2)")
    p.add_argument("--sk", action="store_true", help="report the spectral kurtosis maximum")
    p.add_argument("--features", metavar="JSON", help="a features table as JSON (the keys of docs/signal.md)")
    p.add_argument("--config", metavar="FILE", help="take features, window and rate from a sensor of this config")
    p.add_argument("--sensor", metavar="NAME", help="the sensor of --config")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--per-window", action="store_true", help="with --json, include every window's features")
    p.add_argument("--plot", metavar="PNG", help="write waveform, spectrum and envelope spectrum (matplotlib)")
    p.add_argument("--cache-dir", metavar="DIR", help="Numba cache directory (default: see edge-agent warmup)")
    p.set_defaults(func=cmd_analyze)

    w = sub.add_parser("warmup", help="compile every signal kernel into the cache (run at install and start-up)",
                       description="Compile the Numba kernels for the hot path's argument types, or load them from "
                                   "the cache. Cache directory: --cache-dir, else $NUMBA_CACHE_DIR, else "
                                   "$CACHE_DIRECTORY/numba (systemd), else ${XDG_CACHE_HOME:-~/.cache}/edge-agent/"
                                   "numba.")
    w.add_argument("--cache-dir", metavar="DIR", help="Numba cache directory")
    w.add_argument("--json", action="store_true", help="print JSON")
    w.set_defaults(func=cmd_warmup)
