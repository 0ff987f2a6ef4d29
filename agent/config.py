"""Configuration: one TOML file, loaded and validated into typed objects before anything starts.

Every problem is reported at once, each naming the file, the key path and what was expected
(`agent.toml: sensors[1].rate_hz: expected a positive number, got -5`). An invalid file raises `ConfigError`;
the agent refuses to start rather than guess. `--emulate` is applied here too: it swaps every bus for its
emulated backend without editing the file.

Owns: the schema of the agent's own sections (`agent`, `mqtt`, `outbox`, `buses`, `sensors`). Driver-specific
sensor keys are validated by the driver's own schema in `hal` (every key of a `[[sensors]]` table that is not a
generic key below is a driver option).
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.errors import ConfigError
from agent.signal.schema import validate_features
from hal.errors import ConfigurationError
from hal.options import REQUIRED, Option, at_most, in_range, non_negative, parse_options
from hal.sources import DRIVERS, driver_class, validate_driver_options

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.toml")
DEMO_CONFIG_NAME = "demo.toml"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # always fullmatch: `$` would accept a trailing newline
SECRET_FILE_MAX_BYTES = 64 * 1024
CONFIG_MAX_BYTES = 4 * 1024 * 1024
MAX_BLOCK_S = 60.0  # a stream driver's block must fill within this
MAX_WINDOW_S = 86400.0  # a feature window within a day


def _name_check(v: Any) -> str | None:
    return None if _NAME_RE.fullmatch(v) else (
        "expected a name of letters, digits, '_', '-' or '.' (no '/', '+', '#' or spaces), at most 64 characters")


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> "Broker":
        """Parse `mqtt://HOST[:PORT]`, `mqtts://HOST[:PORT]` or plain `HOST[:PORT]`; raise ValueError otherwise."""
        text = url if "://" in url else f"mqtt://{url}"
        parts = urlsplit(text)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"expected a broker URL like mqtt://HOST:PORT, got scheme {parts.scheme!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"expected a port number from 1 to 65535 in {url!r}") from None
        if not parts.hostname:
            raise ValueError(f"expected a broker URL like mqtt://HOST:PORT, got {url!r}")
        if parts.path not in ("", "/"):
            raise ValueError(f"expected no path in the broker URL, got {parts.path!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"expected no query or fragment in the broker URL, got {url!r}")
        if parts.username is not None or parts.password is not None:
            # refused rather than silently ignored (or logged with the URL): credentials have their own keys
            raise ValueError("expected no user name or password in the broker URL; use mqtt.username and "
                             "mqtt.password_file (or password_env)")
        return cls(parts.hostname, port or (8883 if tls else 1883), tls)


@dataclass(frozen=True)
class AgentSection:
    id: str
    state_dir: Path | None


@dataclass(frozen=True)
class MqttConfig:
    broker: Broker
    prefix: str = "edge"
    client_id: str = ""
    keepalive_s: int = 30
    inflight: int = 64
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    protocol: str = "3.1.1"
    username: str = ""
    password: str = field(default="", repr=False)  # never logged: resolved from the config, a file or the env
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    tls_insecure: bool = False
    batch: int = 1
    live_share: float = 0.5
    format: str = "json"
    group: str = "none"  # "sensor": one message per sensor poll (README, "Wire format")
    compress: str = "none"  # "deflate": zlib bodies of at least compress_min_bytes
    compress_min_bytes: int = 128


@dataclass(frozen=True)
class SparkplugConfig:
    """Sparkplug B 3.0 settings (used when mqtt.format = "sparkplug")."""

    group_id: str = ""
    edge_node_id: str = ""  # default: the agent id
    primary_host_id: str = ""  # wait for this host's STATE before BIRTH; empty: no primary host
    data_qos: int = 0  # the spec's QoS 0; 1 is an opt-in deviation (README, "Sparkplug B 3.0": durability)


@dataclass(frozen=True)
class CommandsConfig:
    enabled: bool = False
    allow: tuple[str, ...] = ("ping", "capture", "set", "reload")
    max_bytes: int = 4096
    capture_max_s: float = 10.0


@dataclass(frozen=True)
class OutboxConfig:
    commit_interval_ms: int = 200
    commit_max_records: int = 500
    synchronous: str = "full"
    max_mb: float = 256.0
    policy: str = "drop_oldest"
    max_age_h: float = 0.0  # 0: no age bound
    min_free_mb: float = 4.0  # free-space floor on the state directory's file system (0: off)


@dataclass(frozen=True)
class SensorConfig:
    """One `[[sensors]]` entry. `options` are the driver's own keys, already validated by its schema."""

    name: str
    driver: str
    kind: str  # "slow" or "stream"
    options: Mapping[str, Any]
    bus: str | None = None
    interval_s: float = 1.0
    window: int = 4096
    hop: int = 4096
    features: Mapping[str, Any] = field(default_factory=dict)
    path: str = ""  # key path in the file, for messages at run time (`sensors[1]`)
    device: str = ""  # Sparkplug device id (empty: the sensor name)
    acquisition: str = "auto"  # stream sensors: "thread", "process" or "auto" (agent.pipeline decides)


@dataclass(frozen=True)
class Config:
    source: str  # file path, or "<built-in demo>"
    agent: AgentSection
    mqtt: MqttConfig
    outbox: OutboxConfig
    commands: CommandsConfig
    buses: Mapping[str, Mapping[str, Any]]
    sparkplug: SparkplugConfig
    sensors: tuple[SensorConfig, ...]
    emulate: bool
    digest: str  # sha256 of the file's bytes (first 12 hex digits), published in the birth message

    def summary(self) -> list[str]:
        lines = [
            f"config: {self.source} (sha256 {self.digest})",
            f"agent id: {self.agent.id}",
            f"broker: {self.mqtt.broker.url}, topic prefix {self.mqtt.prefix!r}",
            f"outbox: commit every {self.outbox.commit_interval_ms} ms or {self.outbox.commit_max_records} records, "
            f"synchronous={self.outbox.synchronous}, max {self.outbox.max_mb:g} MB",
            f"buses: {', '.join(self.buses) or 'none'}" + (" (all emulated)" if self.emulate else ""),
            f"sensors: {len(self.sensors)}",
        ]
        for s in self.sensors:
            how = (f"{s.options.get('rate_hz', '?')} Hz, window {s.window}, hop {s.hop}" if s.kind == "stream"
                   else f"every {s.interval_s:g} s")
            lines.append(f"  - {s.name}: {s.driver} ({s.kind}, {how})" + (f" on bus {s.bus}" if s.bus else ""))
        return lines


_AGENT_OPTIONS = [
    Option("id", str, REQUIRED, "the agent's id, used in every topic", _name_check),
    Option("state_dir", str, "", "where the outbox lives"),
]
_MQTT_OPTIONS = [
    Option("url", str, "mqtt://localhost:1883", "broker URL, mqtt://HOST:PORT"),
    Option("prefix", str, "edge", "first topic level",
           lambda v: None if v and not set(v) & set("+#") and not v.startswith("/") and not v.endswith("/")
           else "expected a topic prefix without '+', '#' or leading/trailing '/'"),
    Option("client_id", str, "", "MQTT client id (default edge-agent-<id>)"),
    Option("keepalive_s", int, 30, "MQTT keep-alive in seconds", in_range(5, 3600)),
    Option("inflight", int, 64, "QoS 1 messages awaiting PUBACK at most", in_range(1, 65535)),
    Option("reconnect_min_s", (int, float), 0.5, "first reconnect delay", at_most(3600)),
    Option("reconnect_max_s", (int, float), 30.0, "reconnect delay cap", at_most(3600)),
    Option("connect_timeout_s", (int, float), 10.0, "TCP connect timeout", at_most(300)),
    Option("protocol", str, "3.1.1", "MQTT protocol version", choices=("3.1.1", "5")),
    Option("username", str, "", "user name"),
    Option("password", str, "", "password (prefer password_file or password_env)"),
    Option("password_file", str, "", "file holding the password (first line)"),
    Option("password_env", str, "", "environment variable holding the password"),
    Option("ca_file", str, "", "CA certificate(s) to verify the broker (PEM); enables TLS"),
    Option("cert_file", str, "", "client certificate (PEM) for brokers that require one"),
    Option("key_file", str, "", "client private key (PEM)"),
    Option("tls_insecure", bool, False, "skip the broker host name check (never in production)"),
    Option("batch", int, 1, "records of one stream per message (1: no batching)", in_range(1, 1000)),
    Option("live_share", (int, float), 0.5, "share of the in-flight window kept for live data while a backlog "
           "drains", in_range(0.05, 1.0)),
    Option("format", str, "json", "wire format", choices=("json", "sparkplug")),
    Option("group", str, "none", "\"sensor\": the readings of one sensor poll in one message",
           choices=("none", "sensor")),
    Option("compress", str, "none", "\"deflate\": send data bodies as zlib streams", choices=("none", "deflate")),
    Option("compress_min_bytes", int, 128, "compress bodies of at least this many bytes", in_range(1, 1 << 24)),
]
_SPARKPLUG_ID = (lambda v: None if v and not set(v) & set("/+#") else
                 "expected an id without '/', '+' or '#'")
_SPARKPLUG_OPTIONS = [
    Option("group_id", str, "", "Sparkplug group id (required with mqtt.format = \"sparkplug\")",
           lambda v: None if not v else _SPARKPLUG_ID(v)),
    Option("edge_node_id", str, "", "edge node id (default: the agent id)",
           lambda v: None if not v else _SPARKPLUG_ID(v)),
    Option("primary_host_id", str, "", "primary host application id to wait for",
           lambda v: None if not v else _SPARKPLUG_ID(v)),
    Option("data_qos", int, 0, "QoS of BIRTH/DATA messages (0 as the spec says; 1: PUBACK per message)",
           choices=(0, 1)),
]
_COMMANDS_OPTIONS = [
    Option("enabled", bool, False, "accept commands on <prefix>/<id>/cmd/<name>"),
    Option("allow", list, ["ping", "capture", "set", "reload"], "commands accepted",
           lambda v: None if all(x in ("ping", "capture", "set", "reload") for x in v)
           else "expected a list of ping, capture, set, reload"),
    Option("max_bytes", int, 4096, "largest command body accepted", in_range(16, 1 << 20)),
    Option("capture_max_s", (int, float), 10.0, "longest raw capture a command may ask for",
           at_most(60)),
]
_OUTBOX_OPTIONS = [
    Option("commit_interval_ms", int, 200, "group-commit window", in_range(1, 60000)),
    Option("commit_max_records", int, 500, "commit early after this many records", in_range(1, 1000000)),
    Option("synchronous", str, "full", "SQLite synchronous mode", choices=("full", "normal", "extra", "off")),
    Option("max_mb", (int, float), 256.0, "outbox size bound in MB", at_most(1_000_000)),
    Option("max_age_h", (int, float), 0.0, "drop records older than this many hours (0: keep until sent)",
           at_most(24 * 366 * 10, positive_only=False)),
    Option("policy", str, "drop_oldest", "what to drop when the outbox is full",
           choices=("drop_oldest", "drop_newest")),
    Option("min_free_mb", (int, float), 4.0, "keep this much of the file system free: below it the policy drops "
           "records before SQLite runs out of space (0: off)", non_negative),
]
_SENSOR_GENERIC = [
    Option("name", str, REQUIRED, "the sensor's name, used as its stream name", _name_check),
    Option("driver", str, REQUIRED, "the driver, e.g. emulated.vibration"),
    Option("bus", str, "", "the bus it is wired to (a [buses.NAME] table)"),
    Option("interval_s", (int, float), 1.0, "poll interval of a slow sensor", at_most(86400)),
    Option("window", int, 4096, "samples per feature window of a stream sensor", in_range(8, 1 << 22)),
    Option("hop", int, 0, "samples between window starts (default: the window, no overlap)", non_negative),
    Option("features", dict, {}, "feature settings"),
    Option("enabled", bool, True, "false skips the sensor"),
    Option("device", str, "", "Sparkplug device id (default: the sensor name)",
           lambda v: None if not v else _SPARKPLUG_ID(v)),
    Option("acquisition", str, "auto", "stream sensors: read in a thread or a process of its own (auto: a process on "
           "real buses, a thread when emulated)", choices=("auto", "thread", "process")),
]
_BUS_OPTIONS_GENERIC = [
    Option("type", str, REQUIRED, "the bus type", choices=("gpio", "i2c", "serial", "modbus_tcp", "modbus_rtu")),
    Option("backend", str, "real", "real hardware or its emulated backend", choices=("real", "emulated")),
]
_SENSOR_GENERIC_KEYS = {o.name for o in _SENSOR_GENERIC}
_TOP_LEVEL = {"agent", "mqtt", "outbox", "buses", "sensors", "commands", "sparkplug"}


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}")

    def extend(self, prefix: str, errors: list[tuple[str, str]]) -> None:
        for key, message in errors:
            self.add(f"{prefix}.{key}" if prefix else key, message)


def _table(raw: Mapping[str, Any], key: str, problems: _Problems) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        problems.add(key, f"expected a table [{key}], got {type(value).__name__}")
        return {}
    return value


def default_agent_id() -> str:
    host = os.uname().nodename.split(".")[0] or "edge"
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", host)[:64]
    return cleaned if _NAME_RE.fullmatch(cleaned) else "edge"


def parse(raw: Mapping[str, Any], source: str, *, emulate: bool = False, digest: str = "") -> Config:
    """Validate a parsed TOML document. Raises ConfigError listing every problem."""
    problems = _Problems(source)
    for key in raw:
        if key not in _TOP_LEVEL:
            problems.add(key, f"unknown section (known: {', '.join(sorted(_TOP_LEVEL))})")

    agent_schema = [o if o.name != "id" else Option("id", str, default_agent_id(), o.doc, o.check)
                    for o in _AGENT_OPTIONS]
    agent_v, errs = parse_options(agent_schema, _table(raw, "agent", problems))
    problems.extend("agent", errs)

    mqtt_v, errs = parse_options(_MQTT_OPTIONS, _table(raw, "mqtt", problems))
    problems.extend("mqtt", errs)
    broker = Broker("localhost", 1883)
    if "url" in mqtt_v:
        try:
            broker = Broker.parse(mqtt_v["url"])
        except ValueError as e:
            problems.add("mqtt.url", str(e))
    if mqtt_v.get("reconnect_min_s", 0) > mqtt_v.get("reconnect_max_s", 1e9):
        problems.add("mqtt.reconnect_min_s", "expected a value not above mqtt.reconnect_max_s")
    _resolve_secrets(mqtt_v, problems)
    for key in ("ca_file", "cert_file", "key_file"):
        if mqtt_v.get(key) and not os.path.isfile(mqtt_v[key]):
            problems.add(f"mqtt.{key}", f"expected a readable file, {mqtt_v[key]!r} does not exist")
    if bool(mqtt_v.get("cert_file")) != bool(mqtt_v.get("key_file")):
        problems.add("mqtt.cert_file" if not mqtt_v.get("cert_file") else "mqtt.key_file",
                     "expected cert_file and key_file together (a client certificate needs its key)")
    if (mqtt_v.get("ca_file") or mqtt_v.get("cert_file")) and not broker.tls:
        # a CA or client certificate means TLS; without an explicit port, MQTT over TLS listens on 8883
        broker = Broker(broker.host, broker.port if _has_port(mqtt_v.get("url", "")) else 8883, True)

    commands_v, errs = parse_options(_COMMANDS_OPTIONS, _table(raw, "commands", problems))
    problems.extend("commands", errs)
    sparkplug_v, errs = parse_options(_SPARKPLUG_OPTIONS, _table(raw, "sparkplug", problems))
    problems.extend("sparkplug", errs)
    if mqtt_v.get("format") == "sparkplug" and not errs and not sparkplug_v.get("group_id"):
        problems.add("sparkplug.group_id", "missing: expected a group id when mqtt.format = \"sparkplug\"")
    if mqtt_v.get("format") == "sparkplug":
        for key in ("group", "compress"):
            if mqtt_v.get(key, "none") != "none":
                problems.add(f"mqtt.{key}", f"expected \"none\" with mqtt.format = \"sparkplug\" (Sparkplug B has "
                             f"its own encoding), found {mqtt_v[key]!r}")

    outbox_v, errs = parse_options(_OUTBOX_OPTIONS, _table(raw, "outbox", problems))
    problems.extend("outbox", errs)

    buses: dict[str, dict[str, Any]] = {}
    for bus_name, bus_raw in _table(raw, "buses", problems).items():
        path = f"buses.{bus_name}"
        if not isinstance(bus_raw, dict):
            problems.add(path, f"expected a table [{path}], got {type(bus_raw).__name__}")
            continue
        if _name_check(bus_name):
            problems.add(path, _name_check(bus_name) or "")
        generic = {k: v for k, v in bus_raw.items() if k in ("type", "backend")}
        values, errs = parse_options(_BUS_OPTIONS_GENERIC, generic)
        problems.extend(path, errs)
        bus = dict(bus_raw)
        bus.update(values)
        if emulate:
            bus["backend"] = "emulated"
        if not errs:  # type-specific keys, validated by hal (unknown keys, ranges, real-only keys like port)
            from hal.buses import validate_bus
            bus_values, errs = validate_bus(bus["type"], bus)
            problems.extend(path, errs)
            bus.update(bus_values)
        buses[bus_name] = bus

    sensors: list[SensorConfig] = []
    raw_sensors = raw.get("sensors", [])
    if not isinstance(raw_sensors, list):
        problems.add("sensors", "expected an array of tables [[sensors]]")
        raw_sensors = []
    seen: dict[str, str] = {}
    for i, s in enumerate(raw_sensors):
        path = f"sensors[{i}]"
        if not isinstance(s, dict):
            problems.add(path, "expected a table")
            continue
        generic = {k: v for k, v in s.items() if k in _SENSOR_GENERIC_KEYS}
        driver_opts = {k: v for k, v in s.items() if k not in _SENSOR_GENERIC_KEYS}
        g, errs = parse_options(_SENSOR_GENERIC, generic)
        problems.extend(path, errs)
        if not g.get("enabled", True):
            continue
        name, driver = g.get("name"), g.get("driver")
        if name:
            if name in seen:
                problems.add(f"{path}.name", f"expected a unique name, {name!r} is also used by {seen[name]}")
            seen[name] = path
        if g.get("bus") and g["bus"] not in buses:
            problems.add(f"{path}.bus", f"expected the name of a [buses.NAME] table "
                                        f"(defined: {', '.join(buses) or 'none'}), got {g['bus']!r}")
        if driver is None:
            continue
        try:
            cls = driver_class(driver)
        except ConfigurationError:
            problems.add(f"{path}.driver", f"expected one of {', '.join(sorted(DRIVERS))}, got {driver!r}")
            continue
        values, errs = validate_driver_options(driver, driver_opts)
        problems.extend(path, errs)
        bus_check = getattr(cls, "validate_bus", None)  # driver x bus checks (e.g. a rate the I2C clock can carry)
        if bus_check is not None and not errs and g.get("bus") in buses:
            problems.extend(path, bus_check(values, buses[g["bus"]]))
        kind = getattr(cls, "kind", "slow")
        if kind != "stream" and g.get("acquisition") == "process":
            problems.add(f"{path}.acquisition", "expected 'auto' or 'thread' for a slow sensor (only a stream sensor "
                                                "is read in a process of its own), got 'process'")
        _, feature_errs = validate_features(kind, g.get("features", {}))
        problems.extend(f"{path}.features", feature_errs)
        window = g.get("window", 4096)
        hop = g.get("hop", 0) or window
        if kind == "stream" and hop > window * 64:
            problems.add(f"{path}.hop", f"expected at most 64 windows ({window * 64}), got {hop}")
        rate = values.get("rate_hz") if not errs else None
        if kind == "stream" and isinstance(rate, (int, float)) and rate > 0:
            # a block or a window that takes longer than this to fill looks like a dead sensor, not a slow one
            block = values.get("block_size")
            if isinstance(block, int) and block / rate > MAX_BLOCK_S:
                problems.add(f"{path}.block_size",
                             f"expected a block that fills within {MAX_BLOCK_S:g} s at {rate:g} Hz "
                             f"(at most {int(rate * MAX_BLOCK_S)} samples), got {block}")
            if window / rate > MAX_WINDOW_S:
                problems.add(f"{path}.window",
                             f"expected a window that fills within {MAX_WINDOW_S:g} s at {rate:g} Hz "
                             f"(at most {int(rate * MAX_WINDOW_S)} samples), got {window}")
        if name and driver and not errs:
            sensors.append(SensorConfig(name=name, driver=driver, kind=kind, options=values, bus=g.get("bus") or None,
                                        interval_s=float(g.get("interval_s", 1.0)), window=window, hop=hop,
                                        features=g.get("features", {}), path=path, device=g.get("device", ""),
                                        acquisition=g.get("acquisition", "auto")))

    if problems.items:
        raise ConfigError(problems.items)
    state_dir = agent_v.get("state_dir") or ""
    return Config(
        source=source,
        agent=AgentSection(id=agent_v["id"], state_dir=Path(state_dir).expanduser() if state_dir else None),
        mqtt=MqttConfig(broker=broker, **{k: v for k, v in mqtt_v.items()
                                           if k not in ("url", "password_file", "password_env")}),
        outbox=OutboxConfig(**outbox_v),
        sparkplug=SparkplugConfig(**sparkplug_v),
        commands=CommandsConfig(enabled=commands_v["enabled"], allow=tuple(commands_v["allow"]),
                                max_bytes=commands_v["max_bytes"], capture_max_s=float(commands_v["capture_max_s"])),
        buses=buses,
        sensors=tuple(sensors),
        emulate=emulate,
        digest=digest,
    )


def _has_port(url: str) -> bool:
    try:
        return urlsplit(url).port is not None
    except ValueError:
        return False


def _resolve_secrets(mqtt_v: dict[str, Any], problems: _Problems) -> None:
    """password, password_file or password_env (one of them); the value is never put in a message."""
    given = [k for k in ("password", "password_file", "password_env") if mqtt_v.get(k)]
    if len(given) > 1:
        problems.add(f"mqtt.{given[1]}", f"expected only one of password, password_file, password_env "
                                         f"(also set: {', '.join(given[:1])})")
        return
    if mqtt_v.get("password_file"):
        path = mqtt_v["password_file"]
        try:
            text = read_small_file(path)
        except ValueError as e:
            problems.add("mqtt.password_file", str(e))
        else:
            mqtt_v["password"] = text.split("\n", 1)[0].rstrip("\r")
            if not mqtt_v["password"]:
                problems.add("mqtt.password_file", f"expected the password on the first line of {path!r}, it is empty")
    elif mqtt_v.get("password_env"):
        name = mqtt_v["password_env"]
        if name not in os.environ:
            problems.add("mqtt.password_env", f"expected the environment variable {name} to be set")
        else:
            mqtt_v["password"] = os.environ[name]
    if mqtt_v.get("password") and not mqtt_v.get("username"):
        problems.add("mqtt.username", "expected a user name with the password")


def read_small_file(path: str, max_bytes: int = SECRET_FILE_MAX_BYTES) -> str:
    """The text of a small regular file (a password file): never blocks on a FIFO or a device, never reads more
    than `max_bytes`. Raises ValueError with an "expected ..." message naming the file."""
    data = read_regular_file(path, max_bytes)
    if b"\0" in data:
        raise ValueError(f"expected text, {path!r} holds a NUL byte (at byte {data.index(0)})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"expected UTF-8 text in {path!r} ({e.reason} at byte {e.start})") from None


def read_regular_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; ValueError ("expected ...") for a FIFO, a device, a
    directory, a larger file or an unreadable one. Opened non-blocking, so a FIFO never hangs the caller."""
    import stat as stat_mod

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ValueError(f"expected a readable file, cannot open {path!r}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            kind = ("a directory" if stat_mod.S_ISDIR(st.st_mode) else "a FIFO" if stat_mod.S_ISFIFO(st.st_mode)
                    else "a device" if stat_mod.S_ISCHR(st.st_mode) or stat_mod.S_ISBLK(st.st_mode)
                    else "a socket" if stat_mod.S_ISSOCK(st.st_mode) else "not a regular file")
            raise ValueError(f"expected a regular file, {path!r} is {kind}")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ValueError(f"expected a readable file, cannot read {path!r}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise ValueError(f"expected a file of at most {max_bytes} bytes, {path!r} is larger")
    return data


def _decode(data: bytes, source: str) -> Mapping[str, Any]:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError([f"{source}: expected UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: not valid TOML: {e}"]) from None


def load(path: str | os.PathLike[str], *, emulate: bool = False) -> Config:
    """Load and validate a config file. Raises ConfigError (naming the file) for any problem."""
    p = Path(path)
    if "\0" in str(p):
        raise ConfigError([f"{str(p)!r}: expected a file path without NUL characters"])
    try:
        data = read_regular_file(p, CONFIG_MAX_BYTES)
    except ValueError as e:
        raise ConfigError([f"{p}: cannot read the config file: {e}"]) from None
    return parse(_decode(data, str(p)), str(p), emulate=emulate, digest=hashlib.sha256(data).hexdigest()[:12])


def demo_bytes() -> bytes:
    return resources.files("agent").joinpath(DEMO_CONFIG_NAME).read_bytes()


def load_demo(*, emulate: bool = True) -> Config:
    """The built-in demo: an emulated machine with a vibration sensor and a bearing temperature probe."""
    data = demo_bytes()
    source = "<built-in demo>"
    return parse(_decode(data, source), source, emulate=emulate, digest=hashlib.sha256(data).hexdigest()[:12])
