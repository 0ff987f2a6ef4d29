"""Records and the JSON wire format.

An `Emit` is what the pipeline produces; the outbox gives it a per-stream `seq` and stores it as a `Record`.
Each stream carries one kind. The wire contract (see README, "Wire format"):

* topic `<prefix>/<agent_id>/<kind>/<stream>`;
* body: a JSON object with `agent`, `stream`, `seq` (per stream, strictly increasing, persisted across restarts),
  `ts` (ISO 8601 UTC with millisecond precision and a `Z`, the time of the value or of the window's first
  sample), `quality` (`good` / `uncertain` / `bad`), then the kind's own fields.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hal.types import Quality

KINDS = ("reading", "features", "event", "status", "capture", "health")
RESERVED = frozenset({"agent", "stream", "seq", "ts", "quality", "historical"})


@dataclass(frozen=True, slots=True)
class Emit:
    kind: str
    stream: str
    ts_ns: int
    payload: dict[str, Any]
    quality: Quality = Quality.GOOD

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"record kind must be one of {KINDS}, got {self.kind!r}")
        clash = RESERVED.intersection(self.payload)
        if clash:
            raise ValueError(f"payload of {self.stream} uses reserved keys {sorted(clash)}")


@dataclass(frozen=True, slots=True)
class Record:
    id: int
    stream: str
    seq: int
    ts_ns: int
    kind: str
    quality: Quality
    payload: dict[str, Any] = field(default_factory=dict)


def iso_ts(ts_ns: int) -> str:
    """ISO 8601 UTC with milliseconds: 2026-11-29T07:20:00.123Z."""
    dt = datetime.fromtimestamp(ts_ns // 1_000_000 / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{(ts_ns // 1_000_000) % 1000:03d}Z"


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: send them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# One encoder for every record: `json.dumps` with arguments builds a new JSONEncoder per call. With
# allow_nan=False it raises ValueError on the first NaN/inf, so a payload is copied by `_clean` only then.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _dumps(obj: dict[str, Any]) -> str:
    try:
        return _ENCODER.encode(obj)
    except ValueError as e:  # "Out of range float values are not JSON compliant": a NaN/inf somewhere
        if "ircular" in str(e):  # a circular reference: cleaning would recurse forever
            raise
        return _ENCODER.encode(_clean(obj))


def payload_json(payload: dict[str, Any]) -> str:
    """The compact JSON of a payload; NaN and infinities become null."""
    return _dumps(payload)


def topic(prefix: str, agent_id: str, kind: str, stream: str) -> str:
    return f"{prefix}/{agent_id}/{kind}/{stream}"


def encode(record: Record, agent_id: str, prefix: str, *, historical: bool = False) -> tuple[str, bytes]:
    body: dict[str, Any] = {
        "agent": agent_id,
        "stream": record.stream,
        "seq": record.seq,
        "ts": iso_ts(record.ts_ns),
        "quality": str(record.quality),
    }
    if historical:
        body["historical"] = True
    body.update(record.payload)
    return topic(prefix, agent_id, record.kind, record.stream), _dumps(body).encode()


# -- grouped readings (mqtt.group = "sensor") and compressed bodies (mqtt.compress = "deflate") -------------------
#
# A grouped message carries the readings of one sensor poll (records of kind `reading` on streams
# `<sensor>.<key>` that share one timestamp) on topic `<prefix>/<agent_id>/readings/<sensor>`:
#
#   {"agent": A, "sensor": S, "ts": T, "seq": N, "quality": Q, "unit": U, "values": {KEY: ENTRY, ...}}
#
# plus `"historical": true` for backlog. `seq`, `quality` and `unit` are defaults; an ENTRY is either the bare
# value (the record has the defaults) or an object with `value` and whatever differs (`seq`, `quality`, `unit`)
# or is extra (`error`, `delta`, `total`). Each value is still its own record: stream `S.KEY`, its own seq; the
# expansion (`expand_grouped`) gives exactly the bodies that ungrouped publishing would have sent.

GROUPED_KIND = "readings"  # the topic's kind level of a grouped message
ZLIB_MARK = 0x78  # the first byte of a zlib stream (RFC 1950, 32 KiB window); a JSON body starts with { or [
CONTENT_TYPE_DEFLATE = "application/zlib"  # MQTT 5 content type of a compressed body
MAX_INFLATED_BYTES = 16 * 2**20


def groupable(record: Record, sensor: str) -> bool:
    """Whether `record` can travel in a grouped message of `sensor`."""
    return (record.kind == "reading" and record.stream.startswith(sensor + ".") and len(record.stream) > len(sensor) + 1
            and "value" in record.payload and "unit" in record.payload)


def _mode(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]  # ties: the first encountered (deterministic)


def grouped_body(records: list[Record], agent_id: str, sensor: str, *, historical: bool = False) -> dict[str, Any]:
    """The grouped body of `records`: one sensor, one timestamp, each `groupable(record, sensor)`."""
    first = records[0]
    seq, quality = _mode([r.seq for r in records]), _mode([str(r.quality) for r in records])
    unit = _mode([r.payload["unit"] for r in records])
    body: dict[str, Any] = {"agent": agent_id, "sensor": sensor, "ts": iso_ts(first.ts_ns), "seq": seq,
                            "quality": quality, "unit": unit}
    if historical:
        body["historical"] = True
    values: dict[str, Any] = {}
    cut = len(sensor) + 1
    for r in records:
        if r.ts_ns != first.ts_ns or not groupable(r, sensor):
            raise ValueError(f"record {r.stream} seq {r.seq} does not belong in a group of {sensor} at {first.ts_ns}")
        extra = {k: v for k, v in r.payload.items() if k not in ("value", "unit")}
        if r.seq != seq:
            extra["seq"] = r.seq
        if str(r.quality) != quality:
            extra["quality"] = str(r.quality)
        if r.payload["unit"] != unit:
            extra["unit"] = r.payload["unit"]
        value = r.payload["value"]
        values[r.stream[cut:]] = {"value": value, **extra} if extra or isinstance(value, dict) else value
    body["values"] = values
    return body


def encode_grouped(records: list[Record], agent_id: str, prefix: str, sensor: str, *,
                   historical: bool = False) -> tuple[str, bytes]:
    return (topic(prefix, agent_id, GROUPED_KIND, sensor),
            _dumps(grouped_body(records, agent_id, sensor, historical=historical)).encode())


def expand_grouped(body: Any, where: str = "grouped body") -> list[dict[str, Any]]:
    """A grouped body -> the ungrouped bodies of its records (as `encode` writes them), in its order. Raises
    ValueError naming what is wrong and where."""
    if not isinstance(body, dict):
        raise ValueError(f"{where}: expected a JSON object, found {type(body).__name__}")
    sensor, values = body.get("sensor"), body.get("values")
    if not isinstance(sensor, str) or not sensor:
        raise ValueError(f"{where}.sensor: expected the sensor's name, found {sensor!r:.40}")
    if not isinstance(values, dict) or not values:
        raise ValueError(f"{where}.values: expected an object of {{key: value}}, found {values!r:.40}")
    common = {k: body[k] for k in ("agent", "ts", "quality") if k in body}
    if body.get("historical") is True:
        common["historical"] = True
    out = []
    for key, entry in values.items():
        item: dict[str, Any] = {**common, "stream": f"{sensor}.{key}", "seq": body.get("seq")}
        if isinstance(entry, dict):
            if "value" not in entry:
                raise ValueError(f"{where}.values.{key}: expected an object with a value, found {entry!r:.60}")
            item.update({"unit": body.get("unit"), **entry})
        else:
            item.update({"value": entry, "unit": body.get("unit")})
        out.append(item)
    return out


def deflate(body: bytes) -> bytes:
    """A zlib stream (RFC 1950) of `body`: its first byte is ZLIB_MARK, which no JSON body starts with."""
    return zlib.compress(body, 9)


def inflate(payload: bytes, where: str = "body", limit: int = MAX_INFLATED_BYTES) -> bytes:
    """`payload` as sent: inflated if it is a zlib stream (first byte ZLIB_MARK), else unchanged. Raises
    ValueError on a broken stream or one that inflates beyond `limit` bytes."""
    if not payload or payload[0] != ZLIB_MARK:
        return payload
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, limit)
    except zlib.error as e:
        raise ValueError(f"{where}: a zlib body (first byte 0x78) that does not inflate: {e}") from None
    if d.unconsumed_tail:
        raise ValueError(f"{where}: a zlib body that inflates beyond {limit} bytes")
    if not d.eof:
        raise ValueError(f"{where}: a truncated zlib body")
    return out
