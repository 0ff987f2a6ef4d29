"""The schema of a sensor's `features` table, and its validation (pure Python: no Numba, no NumPy).

`validate_features(kind, features)` checks the table of a stream or slow sensor and returns
`(values, [(key, message), ...])` with defaults filled in; the keys are relative to `features`
(`envelope.band`), so the config loader prefixes `sensors[i].features`. Validating the returned values again
gives the same values, so a processor can validate what it is handed. docs/signal.md documents every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.signal import bearings, iso, layout
from hal.options import REQUIRED, Option, at_most, in_range, non_negative, parse_options, positive

STREAM_STATE_SOURCES = ("rms", "velocity_rms")
ANOMALY_DEFAULT_STREAM = ("rms", "kurtosis", "velocity_rms")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_bands(v: Any) -> str | None:
    if not all(isinstance(b, list) and len(b) == 2 and all(map(_number, b)) and 0 <= b[0] < b[1] for b in v):
        return "expected a list of bands [[lo_hz, hi_hz], ...] with 0 <= lo < hi"
    if len(v) > 64:
        return "expected at most 64 bands"
    return None


def _check_pair(v: Any) -> str | None:
    if len(v) == 2 and all(map(_number, v)) and 0 < v[0] < v[1]:
        return None
    return "expected [lo_hz, hi_hz] with 0 < lo < hi"


def _check_zones(v: Any) -> str | None:
    return None if v == [] else iso.check_limits(v)


def _power_of_two(v: Any) -> str | None:
    return None if 8 <= v <= 4096 and v & (v - 1) == 0 else "expected a power of two from 8 to 4096"


_BEARING_TABLE = [
    Option("balls", int, REQUIRED, "number of rolling elements", in_range(3, 200)),
    Option("ball_diameter", (int, float), REQUIRED, "rolling element diameter", positive),
    Option("pitch_diameter", (int, float), REQUIRED, "pitch diameter (same unit)", positive),
    Option("contact_angle", (int, float), 0.0, "contact angle in degrees", in_range(0, 89.9)),
]

_ENVELOPE = [
    Option("band", (str, list), "auto", "band-pass band [lo_hz, hi_hz], or \"auto\" (spectral kurtosis)",
           lambda v: (None if v == "auto" else "expected \"auto\" or [lo_hz, hi_hz]") if isinstance(v, str)
           else _check_pair(v)),
    Option("bandwidth_hz", (int, float), 0.0, "width of an \"auto\" band (default: rate/8)", non_negative),
    Option("slip", (int, float), 0.02, "search tolerance around each defect frequency, as a fraction",
           in_range(0, 0.2)),
]

_STATE = [
    Option("source", str, "", "the value classified: rms or velocity_rms (stream), the reading (slow)"),
    Option("off_below", (int, float), REQUIRED, "below this the machine is off"),
    Option("running_above", (int, float), REQUIRED, "at or above this the machine is running"),
    Option("hysteresis", (int, float), 0.0, "to leave a state, go this far beyond its band", non_negative),
    Option("min_dwell_s", (int, float), 0.0, "a new state must last this long before it is reported",
           at_most(86400, positive_only=False)),
    Option("report_s", (int, float), 60.0, "interval of the time-in-state report", at_most(7 * 86400)),
]

_ANOMALY = [
    Option("z", (int, float), 4.0, "|z-score| at or above which a value is anomalous", at_most(1000)),
    Option("warmup", int, 30, "values learnt before anomalies are reported", in_range(2, 10_000_000)),
    Option("features", list, [], "features watched (stream default: rms, kurtosis, velocity_rms)",
           lambda v: None if all(isinstance(x, str) for x in v) else "expected a list of feature names"),
    Option("adapt", bool, False, "keep learning from anomalous values too"),
]

STREAM = [
    Option("bands", list, [], "bands [[lo_hz, hi_hz], ...] whose energies are reported", _check_bands),
    Option("peaks", int, 5, "number of spectral peaks reported", in_range(0, 50)),
    Option("velocity", bool, True, "velocity RMS in mm/s from acceleration"),
    Option("velocity_band", list, [10.0, 1000.0], "velocity band [lo_hz, hi_hz]", _check_pair),
    Option("accel_unit", str, "m/s2", "unit of the samples", choices=("m/s2", "g")),
    Option("iso", str, "", "ISO 10816-3 zone preset", choices=("",) + tuple(iso.PRESETS)),
    Option("zones", list, [], "zone limits [A/B, B/C, C/D] in mm/s", _check_zones),
    Option("bearing", (str, dict), "", "bearing preset name or geometry table"),
    Option("shaft_hz", (int, float), 0.0, "shaft speed in Hz", non_negative),
    Option("tachometer", str, "", "slow sensor giving the shaft speed (Hz, or rpm if its unit is rpm)"),
    Option("tachometer_max_age_s", (int, float), 10.0, "ignore older tachometer readings", at_most(86400)),
    Option("envelope", (dict, bool), False, "envelope analysis table (on by default with a bearing)"),
    Option("sk", bool, False, "report the spectral kurtosis maximum (on when the envelope band is auto)"),
    Option("sk_nperseg", int, 64, "spectral kurtosis segment length", _power_of_two),
    Option("sk_hop", int, 0, "spectral kurtosis segment hop (default nperseg/2)", non_negative),
    Option("state", dict, {}, "machine state from the vibration level"),
    Option("anomaly", dict, {}, "z-score anomaly events per feature"),
]

SLOW = [
    Option("deadband", (int, float), 0.0, "report by exception: absolute change needed", non_negative),
    Option("deadband_pct", (int, float), 0.0, "report by exception: change in % of the last value", non_negative),
    Option("heartbeat_s", (int, float), 0.0, "maximum silence with a deadband (default 300 s)",
           at_most(7 * 86400, positive_only=False)),
    Option("aggregate_s", (int, float), 0.0, "interval of min/max/mean/std/count/last (0: off)",
           at_most(7 * 86400, positive_only=False)),
    Option("counter", bool, False, "the value is a counter: report deltas"),
    Option("rollover", int, 0, "counter modulus, e.g. 65536 (0: a decrease is a reset)", non_negative),
    Option("state", dict, {}, "machine state from this value (e.g. motor current)"),
    Option("anomaly", dict, {}, "z-score anomaly events on the value"),
]


def _sub(schema: list[Option], value: Mapping[str, Any], key: str,
         errors: list[tuple[str, str]]) -> dict[str, Any]:
    values, errs = parse_options(schema, value)
    errors.extend((f"{key}.{k}", m) for k, m in errs)
    return values


def _state(kind: str, table: Mapping[str, Any], errors: list[tuple[str, str]]) -> dict[str, Any]:
    if not table:
        return {}
    v = _sub(_STATE, table, "state", errors)
    src = v.get("source", "")
    if kind == "stream":
        if src == "":
            v["source"] = "rms"
        elif src not in STREAM_STATE_SOURCES:
            errors.append(("state.source", f"expected one of {', '.join(STREAM_STATE_SOURCES)}, got {src!r}"))
    elif src not in ("", "value"):
        errors.append(("state.source", f"expected \"value\" for a slow sensor, got {src!r}"))
    else:
        v["source"] = "value"
    if "off_below" in v and "running_above" in v and not v["off_below"] < v["running_above"]:
        errors.append(("state.running_above", f"expected a value above state.off_below ({v['off_below']}), "
                                              f"got {v['running_above']}"))
    return v


def validate_features(kind: str, features: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check a sensor's `features` table for a `kind` ("stream" or "slow") sensor. Keys relative to `features`."""
    if features is None:
        features = {}
    if not isinstance(features, Mapping):
        return {}, [("", "expected a table")]
    errors: list[tuple[str, str]] = []
    if kind == "stream":
        values, errs = parse_options(STREAM, features)
        errors.extend(errs)
        bearing = values.get("bearing", "")
        if isinstance(bearing, str) and bearing:
            try:
                bearings.preset(bearing)
            except ValueError as e:
                errors.append(("bearing", str(e)))
        elif isinstance(bearing, dict):
            geo = _sub(_BEARING_TABLE, bearing, "bearing", errors)
            if len(geo) == len(_BEARING_TABLE):
                try:
                    bearings.BearingGeometry(geo["balls"], geo["ball_diameter"], geo["pitch_diameter"],
                                             geo["contact_angle"])
                except ValueError as e:
                    errors.append(("bearing", str(e).replace("bearing : ", "")))
            values["bearing"] = geo
        env = values.get("envelope", False)
        if isinstance(env, dict):
            values["envelope"] = _sub(_ENVELOPE, env, "envelope", errors)
        elif env is True or (env is False and "envelope" not in features and bearing):
            values["envelope"] = _sub(_ENVELOPE, {}, "envelope", errors)
        else:
            values["envelope"] = False
        if values.get("iso") and values.get("zones"):
            errors.append(("zones", "expected either iso (a preset) or zones (explicit limits), not both"))
        if values.get("shaft_hz") and values.get("tachometer"):
            errors.append(("tachometer", "expected either shaft_hz or tachometer, not both"))
        sk_nperseg = values.get("sk_nperseg", 64)
        if values.get("sk_hop", 0) > sk_nperseg:
            errors.append(("sk_hop", f"expected at most sk_nperseg ({sk_nperseg}), got {values['sk_hop']}"))
        values["state"] = _state(kind, values.get("state", {}), errors)
        if values["state"].get("source") == "velocity_rms" and values.get("velocity") is False:
            errors.append(("state.source", "expected rms when velocity is false, got 'velocity_rms'"))
        if values.get("anomaly"):
            values["anomaly"] = _sub(_ANOMALY, values["anomaly"], "anomaly", errors)
            unknown = [f for f in values["anomaly"].get("features", []) if f not in layout.SCALAR_NAMES]
            if unknown:
                errors.append(("anomaly.features", f"expected names of scalar features "
                                                   f"({', '.join(layout.SCALAR_NAMES)}), got {unknown}"))
    elif kind == "slow":
        values, errs = parse_options(SLOW, features)
        errors.extend(errs)
        if values.get("deadband") and values.get("deadband_pct"):
            errors.append(("deadband_pct", "expected either deadband or deadband_pct, not both"))
        values["state"] = _state(kind, values.get("state", {}), errors)
        if values.get("anomaly"):
            values["anomaly"] = _sub(_ANOMALY, values["anomaly"], "anomaly", errors)
            if values["anomaly"].get("features") not in ([], ["value"]):
                errors.append(("anomaly.features", "expected [\"value\"] or nothing for a slow sensor"))
    else:
        raise ValueError(f"sensor kind must be 'stream' or 'slow', got {kind!r}")
    return values, errors
