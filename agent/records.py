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
