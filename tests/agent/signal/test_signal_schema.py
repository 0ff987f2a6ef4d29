"""The `features` schema: defaults, every problem reported with its key path, and the config loader's use of it."""

import pytest

from agent.config import parse
from agent.errors import ConfigError
from agent.signal.schema import validate_features

from tests.paths import ROOT


def test_stream_defaults_are_complete_and_validating_them_again_changes_nothing():
    values, errors = validate_features("stream", {})
    assert errors == []
    assert values["peaks"] == 5 and values["velocity"] and values["velocity_band"] == [10.0, 1000.0]
    assert values["envelope"] is False and values["state"] == {} and values["anomaly"] == {}
    with_bearing, errors = validate_features("stream", {"bearing": "6205", "shaft_hz": 25})
    assert errors == [] and with_bearing["envelope"] == {"band": "auto", "bandwidth_hz": 0.0, "slip": 0.02}
    for v in (values, with_bearing):
        assert validate_features("stream", v) == (v, [])


def test_every_problem_is_reported_with_its_key():
    _, errors = validate_features("stream", {
        "bands": [[100, 10]], "peaks": 99, "iso": "group9", "bearing": {"balls": 2, "ball_diameter": 1},
        "envelope": {"band": [500, 100], "slip": 0.5}, "state": {"off_below": 5, "running_above": 1},
        "anomaly": {"z": -1}, "shaft_hz": 10, "tachometer": "rpm", "nonsense": 1})
    keys = {k for k, _ in errors}
    assert keys == {"bands", "peaks", "iso", "bearing.balls", "bearing.pitch_diameter", "envelope.band",
                    "envelope.slip", "state.running_above", "anomaly.z", "tachometer", "nonsense"}


def test_state_and_anomaly_must_name_features_that_exist():
    _, errors = validate_features("stream", {"velocity": False, "state": {
        "source": "velocity_rms", "off_below": 0.1, "running_above": 1}, "anomaly": {"features": ["rms", "rsm"]}})
    assert [k for k, _ in errors] == ["state.source", "anomaly.features"]
    assert "'rsm'" in errors[1][1]


def test_slow_schema():
    values, errors = validate_features("slow", {"deadband": 0.5, "heartbeat_s": 60, "counter": True,
                                                "rollover": 65536, "state": {"off_below": 1, "running_above": 10}})
    assert errors == [] and values["state"]["source"] == "value"
    _, errors = validate_features("slow", {"deadband": 1, "deadband_pct": 5, "bands": []})
    assert {k for k, _ in errors} == {"deadband_pct", "bands"}


def test_bearing_presets_and_geometry_tables():
    assert validate_features("stream", {"bearing": "6205-2RS"})[1] == []
    _, errors = validate_features("stream", {"bearing": "nonesuch"})
    assert errors and "6205" in errors[0][1]
    v, errors = validate_features("stream", {"bearing": {"balls": 9, "ball_diameter": 7.94,
                                                         "pitch_diameter": 39.04}})
    assert errors == [] and v["bearing"]["contact_angle"] == 0.0


def test_config_loader_reports_feature_problems_with_the_full_key_path():
    raw = {"agent": {"id": "t"}, "sensors": [
        {"name": "vib", "driver": "emulated.vibration", "features": {"envelope": {"slip": 2}}},
        {"name": "temp", "driver": "emulated.temperature", "features": {"deadband": -1}}]}
    with pytest.raises(ConfigError) as e:
        parse(raw, "agent.toml")
    text = str(e.value)
    assert "agent.toml: sensors[0].features.envelope.slip: expected a number from 0 to 0.2, got 2" in text
    assert "agent.toml: sensors[1].features.deadband:" in text
    ok = parse({"agent": {"id": "t"}, "sensors": [{"name": "vib", "driver": "emulated.vibration",
                                                   "features": {"bearing": "6205", "shaft_hz": 24.75}}]}, "a.toml")
    assert ok.sensors[0].features == {"bearing": "6205", "shaft_hz": 24.75}


def test_the_examples_in_docs_signal_md_are_valid():
    import re
    import tomllib

    from hal.sources import driver_class

    text = (ROOT / "docs" / "signal.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    checked = 0
    for block in blocks:
        for sensor in tomllib.loads(block)["sensors"]:
            kind = getattr(driver_class(sensor["driver"]), "kind", "slow")
            values, errors = validate_features(kind, sensor.get("features", {}))
            assert errors == [], (sensor["name"], errors)
            checked += bool(sensor.get("features"))
    assert checked >= 2
