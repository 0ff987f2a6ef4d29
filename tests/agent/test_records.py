"""The JSON wire encoding of records: non-finite floats become null, and the cached encoder writes exactly the bytes
the original `json.dumps(_clean(...))` wrote."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import pytest

from agent.records import Record, encode, payload_json
from hal.types import Quality


def _reference_clean(value: Any) -> Any:
    """The encoding as it was before the cached encoder (a recursive copy of every payload)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _reference_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_reference_clean(v) for v in value]
    return value


def _reference_json(payload: dict[str, Any]) -> str:
    return json.dumps(_reference_clean(payload), separators=(",", ":"), allow_nan=False)


FINITE = [
    {},
    {"value": 20.5, "unit": "degC"},
    {"value": 1, "unit": "", "delta": 3, "total": 1234567890123},
    {"value": True, "unit": "", "error": "timeout after 0.5 s (bus i2c1, address 0x76)"},
    {"value": None, "unit": "bar"},
    {"value": "running", "unit": "µm/s²"},  # non-ASCII is escaped, as json.dumps does by default
    {"unit": "m/s2", "rate_hz": 1600.0, "n": 1600, "zone": "B",
     "features": {a: {"rms": 1.0 / 3.0, "peak": np.float64(3.25), "kurtosis": 1e-300, "crest": 2.5e300,
                      "bands": [0.1, 0.2, 0.3], "peaks": [(24.75, 0.3), (49.5, 0.1)]} for a in "xyz"}},
    {"nested": [[1, 2.0, [3.5, {"deep": -0.0}]], ()], "big": 10 ** 30, 1: "int key"},
]


@pytest.mark.parametrize("payload", FINITE)
def test_finite_payloads_encode_byte_identical_to_the_reference(payload: dict[str, Any]) -> None:
    assert payload_json(payload) == _reference_json(payload)


NON_FINITE = [
    ({"value": math.nan, "unit": "degC"}, {"value": None, "unit": "degC"}),
    ({"value": math.inf}, {"value": None}),
    ({"value": -math.inf}, {"value": None}),
    ({"value": np.float64("nan")}, {"value": None}),
    ({"features": {"x": {"rms": 1.5, "kurtosis": math.nan, "bands": [1.0, math.inf, 2.0]}}},
     {"features": {"x": {"rms": 1.5, "kurtosis": None, "bands": [1.0, None, 2.0]}}}),
    ({"peaks": [(24.75, -math.inf), (math.nan, 0.5)], "n": 3}, {"peaks": [[24.75, None], [None, 0.5]], "n": 3}),
]


@pytest.mark.parametrize(("payload", "expected"), NON_FINITE)
def test_nan_and_infinity_become_null_at_any_depth(payload: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(payload)
    text = payload_json(payload)
    assert json.loads(text) == expected
    assert "NaN" not in text and "Infinity" not in text
    assert text == _reference_json(payload)
    # the caller's payload is not changed by the cleaning
    assert json.dumps(payload, default=str) == json.dumps(before, default=str)


def test_encode_builds_the_wire_body_and_cleans_non_finite_values() -> None:
    finite = Record(7, "spindle", 42, 1_764_575_999_123_456_789, "features", Quality.UNCERTAIN,
                    {"rms": 0.25, "axes": ["x", "y"]})
    topic, body = encode(finite, "press-7", "plant")
    assert topic == "plant/press-7/features/spindle"
    reference = {"agent": "press-7", "stream": "spindle", "seq": 42, "ts": "2025-12-01T07:59:59.123Z",
                 "quality": "uncertain", "rms": 0.25, "axes": ["x", "y"]}
    assert body == json.dumps(reference, separators=(",", ":"), allow_nan=False).encode()

    bad = Record(8, "spindle", 43, 1_764_575_999_123_456_789, "features", Quality.GOOD,
                 {"rms": math.nan, "bands": [math.inf]})
    _, body = encode(bad, "press-7", "plant", historical=True)
    decoded = json.loads(body)
    assert decoded["historical"] is True
    assert decoded["rms"] is None and decoded["bands"] == [None]


def test_a_circular_payload_is_still_an_error() -> None:
    payload: dict[str, Any] = {"a": []}
    payload["a"].append(payload)
    with pytest.raises(ValueError):
        payload_json(payload)


def test_an_unserialisable_value_is_still_a_type_error() -> None:
    with pytest.raises(TypeError):
        payload_json({"value": object()})
