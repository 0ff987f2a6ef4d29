"""TLS (server verification, hostname check, client certificates) and credentials, against a real Mosquitto."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
from pathlib import Path

import pytest

from agent.config import Broker, parse
from tests.agent_helpers import run_agent, small_config, wait
from tests.mqtt_helpers import MosquittoBroker, Subscriber, free_port

pytestmark = pytest.mark.slow  # TLS brokers and whole agents


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}", cwd=d)


def _leaf(d: Path, name: str, ca: str, san: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    _leaf(d, "wrong-host", "ca", "DNS:broker.example")
    _leaf(d, "client", "ca", "")
    return d


def _tls_broker(tmp_path: Path, pki: Path, server: str = "server") -> tuple[MosquittoBroker, int]:
    tls_port = free_port()
    conf = (f"listener {tls_port} 127.0.0.1\ncafile {pki}/ca.crt\ncertfile {pki}/{server}.crt\n"
            f"keyfile {pki}/{server}.key\nrequire_certificate true\n")
    return MosquittoBroker(tmp_path, extra_conf=conf).start(), tls_port


def _tls_config(port: int, tls_port: int, pki: Path, ca: str = "ca", client: bool = True):
    cfg = small_config(port)
    mqtt = dataclasses.replace(cfg.mqtt, broker=Broker("localhost", tls_port, True), ca_file=str(pki / f"{ca}.crt"),
                               cert_file=str(pki / "client.crt") if client else "",
                               key_file=str(pki / "client.key") if client else "")
    return dataclasses.replace(cfg, mqtt=mqtt)


def test_tls_with_client_certificate_delivers(pki: Path, tmp_path: Path) -> None:
    broker, tls_port = _tls_broker(tmp_path, pki)
    sub = Subscriber(broker.port, "edge/#")  # the consumer uses the plain listener of the same broker
    agent = run_agent(_tls_config(broker.port, tls_port, pki), tmp_path / "state")
    try:
        assert sub.wait_for(lambda s: len(s.records()) >= 5)
    finally:
        agent.stop()
        sub.close()
        broker.stop()


@pytest.mark.parametrize("case,expect", [
    ("wrong_ca", "TLS certificate verification failed"),
    ("wrong_host", "TLS certificate verification failed"),
    ("no_client_cert", "TLS"),
])
def test_tls_refusals_are_explained_and_buffered(pki: Path, tmp_path: Path, case: str, expect: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    broker, tls_port = _tls_broker(tmp_path, pki, "wrong-host" if case == "wrong_host" else "server")
    cfg = _tls_config(broker.port, tls_port, pki, ca="other-ca" if case == "wrong_ca" else "ca",
                      client=case != "no_client_cert")
    caplog.set_level(logging.WARNING, "edge_agent")
    agent = run_agent(cfg, tmp_path / "state")
    try:
        assert wait(lambda: agent.stats.get("uplink_connect_failures") + agent.stats.get("uplink_disconnects") >= 3
                    or agent.stats.get("uplink_refused") >= 3, 20)
        assert wait(lambda: agent.outbox.depth >= 5), "records are kept while the broker cannot be reached"
        assert agent.stats.get("link") != "up" and agent.stats.get("uplink_acked") == 0
    finally:
        agent.stop(drain_s=0.5)
        broker.stop()
    assert expect in agent.uplink.last_error or any(expect in r.getMessage() for r in caplog.records), (
        agent.uplink.last_error, [r.getMessage() for r in caplog.records])
    if case == "wrong_host":
        assert "localhost" in agent.uplink.last_error  # names the host it expected the certificate to be for
    # reported once per outage, not on every retry
    assert sum("cannot reach the broker" in r.getMessage() for r in caplog.records) <= 1


def _password_file(d: Path, user: str, password: str) -> Path:
    f = d / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(f), user, password], check=True, capture_output=True)
    f.chmod(0o600)
    return f


def test_credentials_from_the_environment_are_used_and_never_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-Pa55"
    broker = MosquittoBroker(tmp_path, password_file=_password_file(tmp_path, "edge", secret)).start()
    sub = Subscriber(broker.port, "edge/#", username="edge", password=secret)
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", secret)
    cfg = parse({"agent": {"id": "t1"},
                 "mqtt": {"url": broker.url, "username": "edge", "password_env": "EDGE_MQTT_PASSWORD"},
                 "sensors": [{"name": "temp", "driver": "emulated.temperature", "interval_s": 0.1}]},
                "<test>", emulate=True)
    assert cfg.mqtt.password == secret and secret not in repr(cfg)
    caplog.set_level(logging.DEBUG)
    agent = run_agent(cfg, tmp_path / "state")
    try:
        assert sub.wait_for(lambda s: len(s.records()) >= 3)
    finally:
        agent.stop()
        sub.close()
        broker.stop()
    assert not any(secret in r.getMessage() for r in caplog.records)


def test_wrong_password_is_refused_with_a_clear_message_once(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    broker = MosquittoBroker(tmp_path, password_file=_password_file(tmp_path, "edge", "right")).start()
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    cfg = parse({"agent": {"id": "t1"},
                 "mqtt": {"url": broker.url, "username": "edge", "password_file": str(pw), "reconnect_min_s": 0.1,
                          "reconnect_max_s": 0.2},
                 "sensors": [{"name": "temp", "driver": "emulated.temperature", "interval_s": 0.1}]},
                "<test>", emulate=True)
    caplog.set_level(logging.WARNING, "edge_agent")
    agent = run_agent(cfg, tmp_path / "state")
    try:
        assert wait(lambda: agent.stats.get("uplink_refused") >= 3, 20)
        assert agent.outbox.depth > 0
    finally:
        agent.stop(drain_s=0.5)
        broker.stop()
    refusals = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert "Not authorized" in refusals[0] or "Bad user name or password" in refusals[0]
    assert "wrong" not in " ".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mqtt,expected", [
    ({"password": "x"}, "mqtt.username: expected a user name with the password"),
    ({"username": "u", "password": "x", "password_env": "X"}, "mqtt.password_env: expected only one of"),
    ({"username": "u", "password_env": "EDGE_TEST_UNSET_VAR"},
     "mqtt.password_env: expected the environment variable EDGE_TEST_UNSET_VAR to be set"),
    ({"username": "u", "password_file": "/nonexistent/pw"}, "mqtt.password_file: expected a readable file"),
    ({"ca_file": "/nonexistent/ca.crt"}, "mqtt.ca_file: expected a readable file"),
    ({"cert_file": __file__}, "mqtt.key_file: expected cert_file and key_file together"),
])
def test_credential_and_tls_config_errors(mqtt: dict, expected: str) -> None:
    from agent.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        parse({"mqtt": mqtt}, "agent.toml")
    assert any(expected in p for p in err.value.problems), err.value.problems
    assert "x" not in [p.split(": ")[-1] for p in err.value.problems]
