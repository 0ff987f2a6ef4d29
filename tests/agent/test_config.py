"""Configuration: valid files load into typed objects; every broken file names the key path and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.common import resolve_state_dir
from agent.config import Broker, load, load_demo, parse
from agent.errors import ConfigError

from tests.paths import ROOT


GOOD_SENSORS = """
[[sensors]]
name = "temp"
driver = "emulated.temperature"
"""

BROKEN = [
    # (toml text, expected message fragment exactly as printed after "agent.toml: ")
    ("[[sensors]]\nname='a'\ndriver='emulated.temperature'\n[[sensors]]\nname='b'\ndriver='emulated.vibration'\n"
     "rate_hz=-5\n", "sensors[1].rate_hz: expected a positive number, got -5"),
    ("[[sensors]]\nname='a'\ndriver='nope'\n", "sensors[0].driver: expected one of"),
    ("[[sensors]]\ndriver='emulated.temperature'\n", "sensors[0].name: missing: expected a string"),
    ("[[sensors]]\nname='a b'\ndriver='emulated.temperature'\n", "sensors[0].name: expected a name of letters"),
    ("[[sensors]]\nname='a'\ndriver='emulated.temperature'\n[[sensors]]\nname='a'\ndriver='emulated.temperature'\n",
     "sensors[1].name: expected a unique name, 'a' is also used by sensors[0]"),
    ("[[sensors]]\nname='a'\ndriver='emulated.temperature'\ninterval_s='fast'\n",
     "sensors[0].interval_s: expected a number, got 'fast'"),
    ("[[sensors]]\nname='a'\ndriver='emulated.temperature'\nbogus=1\n", "sensors[0].bogus: unknown option"),
    ("[[sensors]]\nname='a'\ndriver='emulated.vibration'\nwindow=4\n",
     "sensors[0].window: expected a number from 8 to 4194304, got 4"),
    ("[[sensors]]\nname='a'\ndriver='emulated.vibration'\naxes=[]\n",
     "sensors[0].axes: expected a non-empty list of names, got a list"),
    ("[[sensors]]\nname='a'\ndriver='emulated.temperature'\nbus='i2c1'\n",
     "sensors[0].bus: expected the name of a [buses.NAME] table (defined: none), got 'i2c1'"),
    ("[mqtt]\nurl='http://broker'\n", "mqtt.url: expected a broker URL like mqtt://HOST:PORT, got scheme 'http'"),
    ("[mqtt]\nurl='mqtt://broker:99999'\n", "mqtt.url: expected a port number from 1 to 65535"),
    ("[mqtt]\nkeepalive_s=1\n", "mqtt.keepalive_s: expected a number from 5 to 3600, got 1"),
    ("[mqtt]\nprefix='a/#'\n", "mqtt.prefix: expected a topic prefix without '+', '#'"),
    ("[mqtt]\nreconnect_min_s=60\n", "mqtt.reconnect_min_s: expected a value not above mqtt.reconnect_max_s"),
    ("[outbox]\nsynchronous='sometimes'\n", "outbox.synchronous: expected one of 'full', 'normal', 'extra', 'off'"),
    ("[outbox]\npolicy='drop_everything'\n", "outbox.policy: expected one of 'drop_oldest', 'drop_newest'"),
    ("[outbox]\nmax_mb=0\n", "outbox.max_mb: expected a positive number, got 0"),
    ("[agent]\nid='has/slash'\n", "agent.id: expected a name of letters"),
    ("[agent]\nid=7\n", "agent.id: expected a string, got 7"),
    ("[buses.i2c1]\ntype='can'\n", "buses.i2c1.type: expected one of 'gpio', 'i2c', 'serial'"),
    ("[buses.plc]\ntype='modbus_tcp'\nbackend='emulated'\n[[sensors]]\nname='p'\ndriver='modbus'\nbus='plc'\n"
     "[[sensors.registers]]\nname='a'\naddress=1\ntable='input'\nwritable=true\n",
     "sensors[0].registers[0].writable: expected false: input registers cannot be written"),
    ("[buses.plc]\ntype='modbus_tcp'\nbackend='emulated'\n[[sensors]]\nname='p'\ndriver='modbus'\nbus='plc'\n"
     "[[sensors.registers]]\nname='a'\naddress=1\nwritable=true\nmin=5\nmax=1\n",
     "sensors[0].registers[0].min: expected min <= max, got 5 > 1"),
    ("mqtt = 5\n", "mqtt: expected a table [mqtt], got int"),
    ("[sensor]\nname='typo'\n", "sensor: unknown section"),
    ("sensors = 'x'\n", "sensors: expected an array of tables [[sensors]]"),
]


@pytest.mark.parametrize("text,expected", BROKEN, ids=[b[1].split(":")[0] for b in BROKEN])
def test_broken_config_names_key_path(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert any(p.startswith(f"{path}: ") and expected in p for p in err.value.problems), err.value.problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[mqtt]\nkeepalive_s=1\nprefix='#'\n[[sensors]]\nname='a'\ndriver='emulated.vibration'\n"
                    "rate_hz=-1\nblock_size=0\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    keys = sorted(p.split(": ")[1] for p in err.value.problems)
    assert keys == ["mqtt.keepalive_s", "mqtt.prefix", "sensors[0].block_size", "sensors[0].rate_hz"]


def test_not_toml_and_not_readable(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[mqtt\nurl=")
    with pytest.raises(ConfigError, match=r"agent.toml: not valid TOML"):
        load(path)
    with pytest.raises(ConfigError, match=r"missing.toml: cannot read the config file"):
        load(tmp_path / "missing.toml")


def test_valid_config_is_typed(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[agent]\nid='press-7'\n[mqtt]\nurl='mqtt://10.0.0.5:1884'\nprefix='plant/a'\n"
                    "[outbox]\npolicy='drop_newest'\n" + GOOD_SENSORS +
                    "[[sensors]]\nname='vib'\ndriver='emulated.vibration'\nrate_hz=1600\nwindow=1024\nhop=512\n")
    c = load(path)
    assert c.agent.id == "press-7"
    assert c.mqtt.broker == Broker("10.0.0.5", 1884, False)
    assert c.mqtt.prefix == "plant/a"
    assert c.outbox.policy == "drop_newest"
    temp, vib = c.sensors
    assert (temp.kind, temp.interval_s) == ("slow", 1.0)
    assert (vib.kind, vib.window, vib.hop, vib.options["rate_hz"]) == ("stream", 1024, 512, 1600.0)
    assert len(c.digest) == 12


def test_disabled_sensor_is_skipped_and_emulate_swaps_buses() -> None:
    c = parse({"buses": {"i2c1": {"type": "i2c"}}, "sensors": [
        {"name": "a", "driver": "emulated.temperature", "enabled": False}]}, "x.toml", emulate=True)
    assert c.sensors == ()
    assert c.buses["i2c1"]["backend"] == "emulated"


def test_broker_url_forms() -> None:
    assert Broker.parse("localhost") == Broker("localhost", 1883)
    assert Broker.parse("mqtts://h") == Broker("h", 8883, True)
    assert Broker.parse("mqtt://h:1") == Broker("h", 1)
    for bad in ("http://h", "mqtt://", "mqtt://h/path"):
        with pytest.raises(ValueError):
            Broker.parse(bad)


def test_state_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    demo = load_demo()
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert resolve_state_dir(None, demo) == tmp_path / "xdg" / "edge-agent"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "sd"))
    assert resolve_state_dir(None, demo) == tmp_path / "sd"
    conf = parse({"agent": {"state_dir": str(tmp_path / "cfg")}}, "x.toml")
    assert resolve_state_dir(None, conf) == tmp_path / "cfg"
    assert resolve_state_dir(str(tmp_path / "cli"), conf) == tmp_path / "cli"


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid(example: Path) -> None:
    load(example, emulate=True)


def test_config_check_cli(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text("[[sensors]]\nname='a'\ndriver='emulated.vibration'\nrate_hz=-5\n")
    r = subprocess.run([sys.executable, "-m", "agent", "config", "check", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"{bad}: sensors[0].rate_hz: expected a positive number, got -5" in r.stderr
    r = subprocess.run([sys.executable, "-m", "agent", "config", "check", str(ROOT / "examples" / "agent.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout and "sensors:" in r.stdout


def test_the_built_in_demo_is_the_emulated_plant_example() -> None:
    """agent/demo.toml is examples/plant.toml with the agent id `demo`: one machine for the newcomer and the docs."""
    import tomllib
    demo = tomllib.loads((ROOT / "agent" / "demo.toml").read_text())
    plant = tomllib.loads((ROOT / "examples" / "plant.toml").read_text())
    assert demo["agent"]["id"] == "demo"
    demo["agent"]["id"] = plant["agent"]["id"]
    assert demo == plant
    assert {s.name for s in load_demo().sensors} >= {"spindle_vibration", "bearing", "motor", "energy", "drive"}
