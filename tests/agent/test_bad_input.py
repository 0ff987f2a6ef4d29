"""Bad input, item by item: each gets one clear error naming the key path (or the sensor and bus), nothing running is
disturbed. The fuzzers (test_config_fuzz, test_commands_fuzz, service/test_status_socket_abuse,
hal/test_modbus_misbehaving_slave) look for what these examples miss."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import hal.sources
from agent.config import load, parse
from agent.errors import ConfigError
from agent.pipeline import Pipeline
from tests.agent_helpers import wait
from tests.paths import ROOT

BASE: dict[str, Any] = {"agent": {"id": "t1"}, "mqtt": {"url": "mqtt://127.0.0.1:1883"}}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse(raw, "<t>", emulate=True)
    return err.value.problems


def one(raw: dict[str, Any], expected: str) -> None:
    found = problems(raw)
    assert any(expected in p for p in found), found


def with_sensor(**s: Any) -> dict[str, Any]:
    return {**BASE, "sensors": [{"name": "temp", "driver": "emulated.temperature", **s}]}


@pytest.mark.parametrize("value,expected", [
    (math.inf, "sensors[0].interval_s: expected a finite number, got inf"),
    (math.nan, "sensors[0].interval_s: expected a finite number, got nan"),
    (2 ** 1024, "sensors[0].interval_s: expected a number of at most 1e+15 in magnitude, got an integer of 309 digits"),
    (86401, "sensors[0].interval_s: expected a number of at most 86400, got 86401"),
    (-1, "sensors[0].interval_s: expected a positive number, got -1"),
])
def test_numbers_must_be_finite_and_sane(value, expected) -> None:
    one(with_sensor(interval_s=value), expected)


@pytest.mark.parametrize("section,key,value,expected", [
    ("outbox", "max_age_h", math.inf, "outbox.max_age_h: expected a finite number, got inf"),
    ("outbox", "max_mb", 1e300, "outbox.max_mb: expected a number of at most 1e+15 in magnitude"),
    ("mqtt", "reconnect_max_s", -math.inf, "mqtt.reconnect_max_s: expected a finite number, got -inf"),
    ("commands", "capture_max_s", 3600, "commands.capture_max_s: expected a number of at most 60"),
    ("agent", "state_dir", "/var/lib/a\0b", "agent.state_dir: expected text without NUL characters"),
    ("agent", "id", "edge\n", "agent.id: expected a name of letters"),
    ("mqtt", "url", "mqtt://user:secret@broker:1883", "mqtt.url: expected no user name or password in the broker"),
    ("mqtt", "url", "mqtt://user@broker", "mqtt.url: expected no user name or password"),
])
def test_section_values(section, key, value, expected) -> None:
    raw = {**BASE, section: {**BASE.get(section, {}), key: value}}
    found = problems(raw)
    assert any(expected in p for p in found), found
    assert not any("secret" in p for p in found), "a password in the URL is never echoed"


def test_a_sensor_name_with_a_trailing_newline_is_refused() -> None:
    one(with_sensor(name="temp\n"), "sensors[0].name: expected a name of letters")


def test_a_block_that_never_fills_is_refused() -> None:
    raw = {**BASE, "sensors": [{"name": "vib", "driver": "emulated.vibration", "rate_hz": 10, "block_size": 65536,
                                "window": 65536}]}
    one(raw, "sensors[0].block_size: expected a block that fills within 60 s at 10 Hz (at most 600 samples)")
    raw["sensors"][0]["block_size"] = 10 ** 12
    one(raw, "sensors[0].block_size: expected a number from 1 to 65536")


def test_modbus_include_holding_a_list_or_table_is_a_clear_error() -> None:
    raw = {**BASE, "buses": {"m": {"type": "modbus_tcp", "backend": "emulated"}},
           "sensors": [{"name": "meter", "driver": "modbus", "bus": "m", "profile": "sdm630",
                        "include": [["voltage_l1"], {"a": 1}]}]}
    found = problems(raw)
    assert any("sensors[0].include[0]: expected a register name (a string), got a list" in p for p in found), found
    assert any("sensors[0].include[1]: expected a register name (a string), got a table" in p for p in found), found


def _modbus(reg: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, "buses": {"m": {"type": "modbus_tcp", "backend": "emulated"}},
            "sensors": [{"name": "plc", "driver": "modbus", "bus": "m",
                         "registers": [{"name": "sp", "address": 10, **reg}]}]}


def test_a_writable_register_needs_min_and_max_it_can_hold() -> None:
    one(_modbus({"writable": True}), "sensors[0].registers[0].min: missing: expected min and max")
    one(_modbus({"writable": True, "min": 0}), "sensors[0].registers[0].max: missing: expected min and max")
    one(_modbus({"writable": True, "min": 0, "max": 70000}),
        "sensors[0].registers[0].max: expected a limit the register can hold: 70000 is raw 70000, outside u16's")
    one(_modbus({"writable": True, "min": 0, "max": math.inf}), "sensors[0].registers[0].max: expected a finite")
    parse(_modbus({"writable": True, "min": 0, "max": 6553.5, "scale": 0.1}), "<t>", emulate=True)  # fits exactly
    parse(_modbus({"writable": True, "table": "coil"}), "<t>", emulate=True)  # a coil is on or off


# -- secret files -----------------------------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "nul").write_bytes(b"pass\0word\n")
    (tmp_path / "latin1").write_bytes(b"caf\xe9\n")
    (tmp_path / "big").write_bytes(b"x" * 100_000)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "good").write_text("s3cret\nignored\n")
    return {n: str(tmp_path / n) for n in ("fifo", "nul", "latin1", "big", "empty", "good")} | {
        "dir": str(tmp_path), "zero": "/dev/zero"}


@pytest.mark.parametrize("name,expected", [
    ("fifo", "expected a regular file, '{}' is a FIFO"),
    ("zero", "expected a regular file, '/dev/zero' is a device"),
    ("dir", "expected a regular file, '{}' is a directory"),
    ("nul", "expected text, '{}' holds a NUL byte (at byte 4)"),
    ("latin1", "expected UTF-8 text in '{}' (invalid continuation byte at byte 3)"),
    ("big", "expected a file of at most 65536 bytes, '{}' is larger"),
    ("empty", "expected the password on the first line of '{}', it is empty"),
])
def test_password_file_is_a_small_regular_utf8_file(files, name, expected) -> None:
    raw = {**BASE, "mqtt": {**BASE["mqtt"], "username": "edge", "password_file": files[name]}}
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(p=problems(raw)), daemon=True)
    t.start()
    t.join(30)  # a FIFO or /dev/zero used to block here for ever
    assert not t.is_alive(), "the check returned"
    assert f"<t>: mqtt.password_file: {expected.format(files[name])}" in result["p"], result["p"]


def test_password_file_first_line_is_the_password(files) -> None:
    raw = {**BASE, "mqtt": {**BASE["mqtt"], "username": "edge", "password_file": files["good"]}}
    assert parse(raw, "<t>").mqtt.password == "s3cret"


def test_a_config_path_that_is_a_fifo_is_refused(files) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file: expected a regular file, .* is a FIFO"):
        load(files["fifo"])


def test_a_scenario_file_that_is_a_fifo_or_directory_is_refused(files) -> None:
    from hal.emulated.scenario import ScenarioError, load as load_scenario
    for path in (files["fifo"], files["dir"]):
        with pytest.raises(ScenarioError, match="expected a regular .toml file"):
            load_scenario(path)


# -- the uplink gets what the config says ------------------------------------------------------------------------------

def test_live_share_reaches_the_uplink(tmp_path: Path) -> None:
    """mqtt.live_share was validated and documented but the uplink always used 0.5."""
    raw = {**BASE, "mqtt": {**BASE["mqtt"], "live_share": 0.2}}
    agent = Pipeline(parse(raw, "<t>", emulate=True), tmp_path / "state")
    assert agent.uplink.live_share == 0.2


def test_tls_insecure_warns_at_every_connect(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca"],
                   cwd=tmp_path, check=True, capture_output=True)
    with socket_port() as port:  # nothing listens there: every connect fails, and each one warns
        raw = {**BASE, "mqtt": {"url": f"mqtts://127.0.0.1:{port}", "ca_file": str(tmp_path / "ca.crt"),
                                "tls_insecure": True, "reconnect_min_s": 0.05, "reconnect_max_s": 0.1}}
        agent = Pipeline(parse(raw, "<t>", emulate=True), tmp_path / "state")
        caplog.set_level(logging.WARNING, logger="edge_agent.uplink")
        agent.outbox.start()
        agent.uplink.start()
        try:
            assert wait(lambda: sum("tls_insecure = true" in r.getMessage() for r in caplog.records) >= 3)
        finally:
            agent.uplink.stop(drain_s=0)
            agent.outbox.stop()


class socket_port:
    """A free loopback port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass


# -- reload ----------------------------------------------------------------------------------------------------------

CONFIG = """
[agent]
id = "r1"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
[[sensors]]
name = "vib"
driver = "emulated.vibration"
rate_hz = 1000
block_size = 100
window = 2000
[[sensors]]
name = "temp"
driver = "emulated.temperature"
interval_s = {interval}
"""


def test_reload_is_rate_limited_and_keeps_unchanged_sensors_running(broker, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(port=broker.port, interval=0.1))
    agent = Pipeline(load(path, emulate=True), tmp_path / "state", config_path=str(path))
    first_window: list[int] = []  # samples read when vib's first feature window came out
    agent.outbox.add_observer(lambda e: first_window.append(agent.stats.get("samples.vib"))
                              if e.stream == "vib" and e.kind == "features" and not first_window else None)
    agent.start()
    try:
        vib_reader, vib_proc = agent.readers[0], agent.processors["vib"]
        temp_reader = agent.readers[1]
        assert wait(lambda: agent.stats.get("samples.vib") >= 500)  # a quarter of a window is pending
        path.write_text(CONFIG.format(port=broker.port, interval=0.2))  # only temp changes
        at_reload = agent.stats.get("samples.vib")
        ok, message = agent.reload()
        assert ok and "unchanged sensors kept running: vib" in message, message
        assert agent.readers[0] is vib_reader and agent.processors["vib"] is vib_proc and vib_reader.is_alive()
        assert agent.readers[1] is not temp_reader and not temp_reader.is_alive()
        assert agent.readers[1].sensor.interval_s == 0.2
        ok, message = agent.reload()  # at once: refused, with a reason
        assert not ok and message.startswith("reload refused: the last reload was") and \
            "at most one every 5 s" in message, message
        assert agent.stats.get("reloads_refused") == 1 and agent.stats.get("reloads") == 1
        # the partial window survived the reload: the first window completes 2000 samples after the start, not
        # 2000 samples after the reload
        assert wait(lambda: first_window)
        assert first_window[0] < at_reload + 2000 - 100, (at_reload, first_window)
        assert agent.stats.get("processing_errors.vib") == 0
        assert all(r.is_alive() for r in agent.readers)
    finally:
        agent.stop(drain_s=0.2)


# -- `edge-agent run` names what it could not open ------------------------------------------------------------------

class NoDevice:
    """A driver whose device node is gone, as an emulated RTU bus without ptys looked."""

    kind = "slow"
    OPTIONS: list = []

    def __init__(self, name: str, options: Any, context: Any, bus: str | None = None) -> None:
        raise OSError(19, "No such device")


def _run_with_a_missing_device(tmp_path: Path, *extra: str, env: dict[str, str] | None = None
                               ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nid = "x"\n[buses.rs485]\ntype = "modbus_rtu"\nbackend = "emulated"\n'
                    '[[sensors]]\nname = "drive"\ndriver = "test.nodevice"\nbus = "rs485"\n')
    code = ("import sys, hal.sources; hal.sources.DRIVERS['test.nodevice'] = 'tests.agent.test_bad_input:NoDevice'; "
            "from agent.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, "run", "--config", str(path), "--state-dir",
                           str(tmp_path / "state"), "--duration", "1", *extra], capture_output=True, text=True,
                          timeout=120, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def test_run_names_the_sensor_and_bus_it_could_not_open(tmp_path: Path) -> None:
    r = _run_with_a_missing_device(tmp_path)
    assert r.returncode == 2, r.stderr
    assert ("edge-agent: cannot start: sensors[0] 'drive' (driver test.nodevice) on bus rs485 (modbus_rtu, emulated): "
            "cannot open its driver: OSError: [Errno 19] No such device") in r.stderr, r.stderr
    assert "--debug" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("how", ["--debug", "EDGE_AGENT_DEBUG=1"])
def test_run_with_debug_prints_the_traceback(tmp_path: Path, how: str) -> None:
    r = (_run_with_a_missing_device(tmp_path, "--debug") if how == "--debug"
         else _run_with_a_missing_device(tmp_path, env={"EDGE_AGENT_DEBUG": "1"}))
    assert r.returncode == 2 and "Traceback" in r.stderr and "No such device" in r.stderr, r.stderr


def test_state_dir_and_outbox_are_private(broker, tmp_path: Path) -> None:
    raw = {**BASE, "mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}"}}
    old = os.umask(0o022)  # a permissive login shell
    try:
        agent = Pipeline(parse(raw, "<t>", emulate=True), tmp_path / "state")
        agent.start()
        agent.stop(drain_s=0)
    finally:
        os.umask(old)
    assert (tmp_path / "state").stat().st_mode & 0o077 == 0
    for p in (tmp_path / "state").iterdir():
        if p.name.startswith("outbox.db"):
            assert p.stat().st_mode & 0o077 == 0, p


assert hal.sources  # imported for the DRIVERS registry the subprocess uses
