"""Which Sparkplug metrics a configuration produces, known before the first record: the births' contents.

Owns the mapping stream → (device, metric name) and record → metrics, and the catalog: for every device, every
metric it will ever report in this configuration, with its Sparkplug datatype and unit. The catalog is derived
from the configuration and the drivers' declared channels (`channels()`, `channel_types()`, `axes`, see
`hal.sources`) and from the processing settings (features per axis, events, time-in-state reports, interval
statistics), so a device's metric set never changes within a session (Sparkplug 3.0: every metric a device will
report is in its DBIRTH). Pure: no MQTT, no I/O; the edge node (`agent.sparkplug.node`) publishes.

Names: the stream of a sensor's reading, features or report, relative to the sensor (`<sensor>.<rest>`), with
`.` → `/`: `motor.current` → device `motor`, metric `current`; the features of a stream sensor are
`<axis>/<feature>`; its events `events`, captures `capture`, time-in-state `state/<key>`; a slow channel's interval
statistics `<channel>/stats/<key>`. A sensor whose reading is its own stream reports `value`. Sensors sharing a
`device` keep their name as the first part. Records of no sensor (outbox gap events, health) belong to the device
`agent` as one JSON string metric each (`outbox`, `health`), since their fields vary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.config import Config, SensorConfig
from agent.records import Record
from agent.sparkplug import proto

AGENT_DEVICE = "agent"  # device for records that belong to no sensor (outbox gap events, health)
AGENT_METRICS = ("health", "outbox")  # JSON strings: their fields vary with the machine and the fault
STATS_KEYS = ("interval_s", "count", "bad", "min", "max", "mean", "std", "last")  # agent.signal.slow.IntervalStats
STATE_KEYS = ("state", "interval_s", "off_s", "idle_s", "running_s", "availability")  # processing.StateReporter
_PY_TYPES = {bool: proto.BOOLEAN, int: proto.INT64, float: proto.DOUBLE, str: proto.STRING, bytes: proto.BYTES}


@dataclass(frozen=True)
class MetricSpec:
    datatype: int
    unit: str = ""
    reading: bool = False  # a sensor channel's value (a device whose readings are all bad is dead: DDEATH)


Catalog = dict[str, dict[str, MetricSpec]]


class Router:
    """stream → (device id, metric-name prefix); sensor names are the longest-prefix owners of their streams."""

    def __init__(self, sensors: list[SensorConfig]) -> None:
        self.sensors = sorted(((s.name, s.device or s.name) for s in sensors), key=lambda t: -len(t[0]))
        self._cache: dict[str, tuple[str, str]] = {}

    def route(self, stream: str) -> tuple[str, str]:
        if stream not in self._cache:
            for sensor, device in self.sensors:
                if stream == sensor or stream.startswith(sensor + "."):
                    rel = stream[len(sensor) + 1:].replace(".", "/")
                    prefix = "/".join(x for x in ((sensor if device != sensor else ""), rel) if x)
                    self._cache[stream] = (device, prefix)
                    break
            else:
                self._cache[stream] = (AGENT_DEVICE, stream.replace(".", "/"))
        return self._cache[stream]

    def target_of(self, device: str, metric: str) -> str | None:
        """The `set` target (`SENSOR[.CHANNEL]`) a DCMD metric of a device names: the inverse of `route`."""
        for sensor, dev in self.sensors:
            if dev != device:
                continue
            if device == sensor:
                rest = metric
            elif metric == sensor or metric.startswith(sensor + "/"):
                rest = metric[len(sensor) + 1:]
            else:
                continue
            return sensor if rest in ("", "value") else f"{sensor}.{rest.replace('/', '.')}"
        return None


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(_join(prefix, str(k)), v, out)
    elif isinstance(value, (list, tuple)):
        out.append((prefix, _json(value)))
    else:
        out.append((prefix, value))


def record_metrics(record: Record, prefix: str) -> list[tuple[str, Any]]:
    """(metric name, value) for one record whose stream routes to `prefix`."""
    p = record.payload
    if record.kind == "reading":
        return [(prefix or "value", p.get("value"))]
    if record.kind == "features":
        flat: list[tuple[str, Any]] = []
        if "features" in p:  # a stream sensor's window: the features per axis (window context is not a metric)
            _flatten(prefix, p["features"], flat)
        else:  # interval statistics, time-in-state reports
            _flatten(prefix, {k: v for k, v in p.items() if k != "unit"}, flat)
        return flat
    if record.kind == "capture":
        return [(prefix or "capture", _json(p).encode())]
    return [(prefix or record.kind, _json(p))]  # events, health, status: their JSON body


def _stream_feature_specs(sensor: SensorConfig, source: Any, settings: Mapping[str, Any]) -> dict[str, MetricSpec]:
    from agent.signal.analyzer import Analyzer  # the feature names follow the settings, not the data

    rate = float(getattr(source, "rate_hz", 0) or sensor.options.get("rate_hz", 0) or 1000.0)
    an = Analyzer(sensor.features, rate, sensor.window)
    names = an.named(np.full(an.row_length, math.nan), digits=None)
    axes = tuple(getattr(source, "axes", ()) or ("x",))
    out: dict[str, MetricSpec] = {}
    for axis in axes:
        for name, value in names.items():
            text = name == "zone" or isinstance(value, (list, tuple))
            out[f"{axis}/{name}"] = MetricSpec(proto.STRING if text else proto.DOUBLE)
    return out


def _report_specs(prefix: str, keys: tuple[str, ...], unit: str = "") -> dict[str, MetricSpec]:
    out = {}
    for k in keys:
        dt = proto.STRING if k == "state" else proto.INT64 if k in ("count", "bad") else proto.DOUBLE
        carries_unit = k in ("min", "max", "mean", "std", "last", "delta")
        out[_join(prefix, k)] = MetricSpec(dt, unit if carries_unit else "")
    return out


def sensor_specs(sensor: SensorConfig, source: Any, router: Router) -> dict[str, MetricSpec]:
    """Every metric one sensor reports, named as in its device (prefix included)."""
    from agent.signal.schema import validate_features

    settings, _ = validate_features(sensor.kind, sensor.features)  # validated when the processor was built
    specs: dict[str, MetricSpec] = {}

    def add(stream: str, rel: dict[str, MetricSpec]) -> None:
        _, prefix = router.route(stream)
        for name, spec in rel.items():
            specs[_join(prefix, name) or "value"] = spec

    if sensor.kind == "stream":
        add(sensor.name, _stream_feature_specs(sensor, source, settings))
        add(f"{sensor.name}.events", {"": MetricSpec(proto.STRING)})
        add(f"{sensor.name}.capture", {"": MetricSpec(proto.BYTES)})
        if settings.get("state"):
            add(f"{sensor.name}.state", _report_specs("", STATE_KEYS))
        return specs
    channels = getattr(source, "channels", None)
    declared = list(channels()) if callable(channels) else [(sensor.name, "")]
    types = getattr(source, "channel_types", None)
    types = types() if callable(types) else {}
    for channel, unit in declared:
        add(channel, {"": MetricSpec(_PY_TYPES.get(types.get(channel, float), proto.DOUBLE), unit, reading=True)})
        if settings.get("aggregate_s"):
            keys = STATS_KEYS + (("delta",) if settings.get("counter") else ())
            add(f"{channel}.stats", _report_specs("", keys, unit))
        if settings.get("state"):
            add(f"{channel}.state", _report_specs("", STATE_KEYS))
        if settings.get("state") or settings.get("anomaly"):
            add(f"{channel}.events", {"": MetricSpec(proto.STRING)})
    return specs


def catalog(config: Config, sources: Mapping[str, Any]) -> Catalog:
    """device → metric name → spec, for every configured sensor (and the `agent` device)."""
    router = Router(list(config.sensors))
    out: Catalog = {}
    for sensor in config.sensors:
        device, _ = router.route(sensor.name)
        out.setdefault(device, {}).update(sensor_specs(sensor, sources.get(sensor.name), router))
    agent = out.setdefault(AGENT_DEVICE, {})
    for name in AGENT_METRICS:
        agent.setdefault(name, MetricSpec(proto.STRING))
    return out
