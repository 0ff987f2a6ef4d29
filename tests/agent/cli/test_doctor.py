"""`edge-agent doctor` against emulated buses and devices, a real broker, with faults: one line per check, a fix
hint, exit code non-zero on any failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.cli.doctor import Doctor
from agent.config import load
from hal.i2c import open_i2c
from hal.sources import HalContext
from tests.mqtt_helpers import free_port

PLANT = """
[agent]
id = "press7"

[mqtt]
url = "mqtt://127.0.0.1:{port}"

[buses.i2c0]
type = "i2c"
backend = "emulated"

[[sensors]]
name = "ambient"
driver = "bme280"
bus = "i2c0"
address = 0x76

[[sensors]]
name = "motor"
driver = "ina219"
bus = "i2c0"

[[sensors]]
name = "vib"
driver = "emulated.vibration"
rate_hz = 1000
block_size = 100
window = 200
"""


def _doctor(tmp_path: Path, config: Path, *extra: str, context: HalContext | None = None) -> tuple[int, Doctor]:
    args = build_parser().parse_args(["doctor", "--config", str(config), "--state-dir", str(tmp_path / "state"),
                                      "--socket", str(tmp_path / "none.sock"), "--timeout", "3", *extra])
    doctor = Doctor(args, context=context)
    return doctor.run(), doctor


def _line(doctor: Doctor, name: str):
    return next(c for c in doctor.results if c.name == name)


def test_a_healthy_emulated_plant_passes(broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(PLANT.format(port=broker.port))
    code, doctor = _doctor(tmp_path, cfg)
    out = capsys.readouterr().out
    assert code == 0, out
    assert _line(doctor, "config").status == "ok"
    assert _line(doctor, "bus i2c0").message == "i2c, emulated backend"
    for name in ("device ambient", "device motor", "device vib"):
        assert _line(doctor, name).status == "ok", out
    assert "motor.bus_voltage = " in _line(doctor, "device motor").message
    assert _line(doctor, "broker").message == f"mqtt://127.0.0.1:{broker.port}: MQTT connection accepted"
    assert out.splitlines()[-1].startswith("0 failed")


def test_one_unplugged_device_fails_with_the_right_hint(broker, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The BME280 at 0x76 stops acknowledging (HAL fault injection: an unplugged chip); the INA219 beside it on
    the same bus still answers."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(PLANT.format(port=broker.port))
    config = load(cfg)
    context = HalContext(emulate=config.emulate, buses=config.buses)
    open_i2c(context, "i2c0").nack(0x76, -1)
    code, doctor = _doctor(tmp_path, cfg, context=context)
    out = capsys.readouterr().out
    assert code == 1
    bad = _line(doctor, "device ambient")
    assert bad.status == "FAIL"
    assert "ambient.temperature: I2C bus i2c0 address 0x76 (bme280): no acknowledge" in bad.message
    assert "(3 of 3 channels bad)" in bad.message
    assert "is it plugged in?" in bad.hint and "i2cdetect" in bad.hint
    assert _line(doctor, "device motor").status == "ok"
    assert "[FAIL] device ambient:" in out and "\n       fix: check the device's wiring" in out
    assert out.splitlines()[-1].startswith("1 failed")


def test_doctor_command_exit_code_with_a_dead_probe_and_no_broker(tmp_path: Path) -> None:
    """As a technician runs it: a separate process, a probe that reads bad, a broker that is not there."""
    cfg = tmp_path / "agent.toml"
    port = free_port()
    cfg.write_text(f'[agent]\nid = "p"\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
                   '[[sensors]]\nname = "probe"\ndriver = "emulated.temperature"\nfail = true\n')
    r = subprocess.run([sys.executable, "-m", "agent", "doctor", "--config", str(cfg), "--state-dir",
                        str(tmp_path / "state"), "--socket", str(tmp_path / "none.sock"), "--timeout", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "[FAIL] device probe: emulated.temperature: probe: emulated probe failure" in lines
    broker = next(line for line in lines if line.startswith("[FAIL] broker:"))
    assert f"mqtt://127.0.0.1:{port}: cannot connect: Connection refused" in broker
    assert lines[lines.index(broker) + 1].startswith("       fix: check mqtt.url")
    assert lines[-1].startswith("2 failed")


def test_an_invalid_config_is_a_failed_check_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[[sensors]]\nname = "vib"\ndriver = "emulated.vibration"\nrate_hz = -5\n')
    code, doctor = _doctor(tmp_path, cfg, "--skip-broker")
    assert code == 1
    c = _line(doctor, "config")
    assert c.status == "FAIL" and f"{cfg}: sensors[0].rate_hz: expected a positive number" in c.message
    assert c.hint.startswith(f"edge-agent config check {cfg}")


def test_a_refused_login_is_reported_with_the_credentials_hint(tmp_path: Path) -> None:
    from tests.mqtt_helpers import MosquittoBroker
    pw = tmp_path / "passwd"
    pw.write_text("")
    b = MosquittoBroker(tmp_path, extra_conf=f"password_file {pw}\n")
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    b.start()
    try:
        cfg = tmp_path / "agent.toml"
        cfg.write_text(f'[agent]\nid = "p"\n[mqtt]\nurl = "mqtt://127.0.0.1:{b.port}"\nusername = "edge"\n'
                       'password = "wrong"\n')
        code, doctor = _doctor(tmp_path, cfg)
    finally:
        b.stop()
    c = _line(doctor, "broker")
    assert code == 1 and c.status == "FAIL"
    assert "the broker refused the connection: Not authorized" in c.message
    assert "check mqtt.username and the password" in c.hint


def _bus_config(tmp_path: Path, buses: str) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nid = "p"\n{buses}')
    return cfg


@pytest.fixture
def pty_path():
    import os
    master, slave = os.openpty()
    path = os.ttyname(slave)
    yield Path(path)
    os.close(master)
    os.close(slave)


def test_a_serial_port_the_service_user_may_not_open(tmp_path: Path, pty_path: Path) -> None:
    """A real device node (a pty standing in for /dev/ttyUSB0), group dialout, mode 0660: `nobody` is not in
    dialout, so the check fails and says which group to join; with the node in nobody's group it passes."""
    import grp
    import os
    if os.geteuid() != 0:
        pytest.skip("needs root to change the pty's group")
    os.chown(pty_path, -1, grp.getgrnam("dialout").gr_gid)
    os.chmod(pty_path, 0o660)
    cfg = _bus_config(tmp_path, f'[buses.rs485]\ntype = "modbus_rtu"\nport = "{pty_path}"\n')
    code, doctor = _doctor(tmp_path, cfg, "--skip-broker", "--service-user", "nobody")
    c = _line(doctor, "bus rs485")
    assert code == 1 and c.status == "FAIL"
    assert c.message == f"{pty_path} present but nobody may not open it (owner group dialout, mode crw-rw----)"
    assert c.hint == "sudo usermod -aG dialout nobody && sudo systemctl restart edge-agent"
    os.chown(pty_path, -1, grp.getgrnam("nogroup").gr_gid)
    code, doctor = _doctor(tmp_path, cfg, "--skip-broker", "--service-user", "nobody")
    assert _line(doctor, "bus rs485").message == f"{pty_path} present, nobody may open it (group nogroup)"


def test_an_unplugged_adapter_and_a_modbus_tcp_device(tmp_path: Path) -> None:
    import socket
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)
    port = listening.getsockname()[1]
    closed = free_port()
    cfg = _bus_config(tmp_path, '[buses.usb]\ntype = "serial"\nport = "/dev/ttyUSB-not-there"\n'
                                f'[buses.meter]\ntype = "modbus_tcp"\nhost = "127.0.0.1"\nport = {port}\n'
                                f'[buses.vfd]\ntype = "modbus_tcp"\nhost = "127.0.0.1"\nport = {closed}\n')
    try:
        code, doctor = _doctor(tmp_path, cfg, "--skip-broker")
    finally:
        listening.close()
    assert code == 1
    usb = _line(doctor, "bus usb")
    assert usb.status == "FAIL" and usb.message == "/dev/ttyUSB-not-there does not exist"
    assert "ls -l /dev/serial/by-id/" in usb.hint
    assert _line(doctor, "bus meter").message == f"Modbus TCP 127.0.0.1:{port} accepts connections"
    vfd = _line(doctor, "bus vfd")
    assert vfd.status == "FAIL" and vfd.message == f"Modbus TCP 127.0.0.1:{closed}: Connection refused"
    assert f"nc -vz 127.0.0.1 {closed}" in vfd.hint


def _certificates(d: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for localhost/127.0.0.1 (openssl, EC keys: fast)."""
    import shutil
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=edge-agent test CA", "-days", "2")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.crt", "-days", "2", "-extfile", "san.cnf")
    return d / "ca.crt", d / "server.crt", d / "server.key"


def test_broker_tls_handshake_trusted_and_untrusted(tmp_path: Path) -> None:
    from tests.mqtt_helpers import MosquittoBroker
    ca, cert, key = _certificates(tmp_path)
    b = MosquittoBroker(tmp_path, extra_conf=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n").start()
    try:
        good = tmp_path / "good.toml"
        good.write_text(f'[agent]\nid = "p"\n[mqtt]\nurl = "mqtts://localhost:{b.port}"\nca_file = "{ca}"\n')
        code, doctor = _doctor(tmp_path, good)
        assert _line(doctor, "broker").message == f"mqtts://localhost:{b.port}: TLS, MQTT connection accepted"
        bad = tmp_path / "bad.toml"
        bad.write_text(f'[agent]\nid = "p"\n[mqtt]\nurl = "mqtts://localhost:{b.port}"\n')
        code, doctor = _doctor(tmp_path, bad)
    finally:
        b.stop()
    c = _line(doctor, "broker")
    assert code == 1 and c.status == "FAIL"
    assert c.message.startswith(f"mqtts://localhost:{b.port}: TLS certificate not trusted: ")
    assert c.hint.startswith("set mqtt.ca_file to the CA that signed the broker's certificate")


def test_doctor_asks_the_running_service_instead_of_opening_the_hardware(broker, tmp_path: Path) -> None:
    from agent.service import Service
    from tests.agent_helpers import run_agent, wait
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nid = "p"\n[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
                   '[[sensors]]\nname = "vib"\ndriver = "emulated.vibration"\nrate_hz = 1000\nblock_size = 100\n'
                   'window = 200\n'
                   '[[sensors]]\nname = "probe"\ndriver = "emulated.temperature"\ninterval_s = 0.1\nfail = true\n')
    agent = run_agent(load(cfg, emulate=True), tmp_path / "state")
    sock = tmp_path / "status.sock"
    service = Service(agent, status_socket=sock, environ={})
    service.ready()
    try:
        assert wait(lambda: agent.stats.get("link") == "up" and agent.outbox.next_seq("probe") > 0
                    and agent.outbox.next_seq("vib") > 0)
        args = build_parser().parse_args(["doctor", "--config", str(cfg), "--state-dir", str(tmp_path / "state"),
                                          "--socket", str(sock)])
        doctor = Doctor(args)
        code = doctor.run()
    finally:
        service.stopping()
        agent.stop(drain_s=0.5)
    assert code == 1
    assert _line(doctor, "service").message.startswith("running for ")
    probe = _line(doctor, "device probe")
    assert probe.status == "FAIL" and probe.message == "probe: quality bad: emulated probe failure"
    assert _line(doctor, "device vib").message.startswith("answers in the running service")
    assert _line(doctor, "broker").message == f"mqtt://127.0.0.1:{broker.port}: the running service is connected"
