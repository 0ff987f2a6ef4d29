"""Configuration: one TOML file, loaded and validated into typed objects before anything starts.

Every problem is reported at once, each naming the file, the key path and what was expected
(`agent.toml: sensors[1].rate_hz: expected a positive number, got -5`). An invalid file raises `ConfigError`;
the agent refuses to start rather than guess. `--emulate` is applied here too: it swaps every bus for its
emulated backend without editing the file.

Owns: the schema of the agent's own sections (`agent`, `mqtt`, `outbox`, `commands`, `sparkplug`, `buses`,
`sensors`). Each key of those sections is declared once, as a field of the typed config it fills
(`setting(default, doc, check=...)`): the `hal.options` schema that validates the file is generated from the fields
(`options(MqttConfig)`), so a key cannot be validated and documented yet never reach the code, and no default is
written twice. Whoever uses a setting takes the typed config object (`Outbox(state_dir, config.outbox)`,
`Uplink(config, ...)`) and reads it there, without a default of its own. Driver-specific sensor keys are validated
by the driver's own schema in `hal` (every key of a `[[sensors]]` table that is not a generic key below is a driver
option).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
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


def _sparkplug_id(v: Any) -> str | None:
    """An optional Sparkplug id: empty, or without the topic characters."""
    return None if not v or not set(v) & set("/+#") else "expected an id without '/', '+' or '#'"


def _prefix_check(v: Any) -> str | None:
    return None if v and not set(v) & set("+#") and not v.startswith("/") and not v.endswith("/") else (
        "expected a topic prefix without '+', '#' or leading/trailing '/'")


def _allow_check(v: Any) -> str | None:
    return None if all(x in COMMANDS for x in v) else f"expected a list of {', '.join(COMMANDS)}"


def default_agent_id() -> str:
    host = os.uname().nodename.split(".")[0] or "edge"
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", host)[:64]
    return cleaned if _NAME_RE.fullmatch(cleaned) else "edge"


# -- settings: each key of the agent's own sections is declared once, as the field of the typed config it fills ------

_SETTING = "edge_agent.setting"  # the dataclasses.field metadata key


@dataclass(frozen=True)
class _Setting:
    key: str | None  # the key in the file; None: the field's name
    default: Any  # as written in the file; REQUIRED; or a callable giving it at load time
    doc: str
    check: Callable[[Any], Any] | None
    choices: tuple[Any, ...] | None
    convert: Callable[[Any], Any] | None  # the file's value -> the field's (a ValueError is the key's problem)
    extra_keys: tuple[Option, ...]  # keys read with this one that have no field of their own


def setting(default: Any, doc: str, *, check: Callable[[Any], Any] | None = None,
            choices: tuple[Any, ...] | None = None, key: str | None = None,
            convert: Callable[[Any], Any] | None = None, extra_keys: tuple[Option, ...] = (),
            **field_options: Any) -> Any:
    """A dataclass field that is also a config key: its default, doc and validation, declared once.

    `default` is written as in the file (`REQUIRED`: the key must be given; a callable: computed at load time, as
    the host name for `agent.id`); the field's own default is that value, converted. The key's type in the file
    follows the field's annotation (`float` accepts integers too, a `tuple` is a TOML array, a `Mapping` a table),
    or the default's type when `convert` makes the field from the file's value (`mqtt.url` -> `broker`).
    `extra_keys` are read right after this key and have no field (`password_file` and `password_env` give
    `password`); `parse` resolves them."""
    meta = {_SETTING: _Setting(key, default, doc, check, choices, convert, tuple(extra_keys))}
    if default is REQUIRED:
        return field(metadata=meta, **field_options)
    if callable(default):
        return field(default_factory=lambda: convert(default()) if convert else default(), metadata=meta,
                     **field_options)
    value = convert(default) if convert else default
    if isinstance(value, (list, dict)):
        return field(default_factory=lambda: type(value)(value), metadata=meta, **field_options)
    return field(default=value, metadata=meta, **field_options)


def _settings(cls: type) -> list[tuple[str, _Setting, Any]]:
    """(field name, setting, resolved annotation) of every field of `cls` that is a config key, in field order."""
    hints = typing.get_type_hints(cls)
    return [(f.name, f.metadata[_SETTING], hints[f.name]) for f in dataclasses.fields(cls) if _SETTING in f.metadata]


def _file_type(hint: Any, s: _Setting) -> type | tuple[type, ...]:
    if s.convert is not None:
        return type(s.default)
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return (int, float)
    if origin is tuple:
        return list
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return dict
    return origin


def options(cls: type) -> list[Option]:
    """The schema of a config section, generated from its dataclass: one `hal.options.Option` per key."""
    out = []
    for name, s, hint in _settings(cls):
        default = s.default() if callable(s.default) else s.default
        out.append(Option(s.key or name, _file_type(hint, s), default, s.doc, s.check, s.choices))
        out.extend(s.extra_keys)
    return out


def defaults(cls: type) -> dict[str, Any]:
    """{key: default as written in the file} of a config section (REQUIRED keys left out)."""
    return {o.name: o.default for o in options(cls) if not o.required}


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
    id: str = setting(default_agent_id, "the agent's id, used in every topic", check=_name_check)
    state_dir: Path | None = setting("", "where the outbox lives",
                                     convert=lambda s: Path(s).expanduser() if s else None)


@dataclass(frozen=True)
class MqttConfig:
    broker: Broker = setting("mqtt://localhost:1883", "broker URL, mqtt://HOST:PORT", key="url",
                             convert=Broker.parse)
    prefix: str = setting("edge", "first topic level", check=_prefix_check)
    client_id: str = setting("", "MQTT client id (default edge-agent-<id>)")
    keepalive_s: int = setting(30, "MQTT keep-alive in seconds", check=in_range(5, 3600))
    inflight: int = setting(64, "QoS 1 messages awaiting PUBACK at most", check=in_range(1, 65535))
    reconnect_min_s: float = setting(0.5, "first reconnect delay", check=at_most(3600))
    reconnect_max_s: float = setting(30.0, "reconnect delay cap", check=at_most(3600))
    connect_timeout_s: float = setting(10.0, "TCP connect timeout", check=at_most(300))
    protocol: str = setting("3.1.1", "MQTT protocol version", choices=("3.1.1", "5"))
    username: str = setting("", "user name")
    # never logged: resolved from the config, a file or the environment
    password: str = setting("", "password (prefer password_file or password_env)", repr=False, extra_keys=(
        Option("password_file", str, "", "file holding the password (first line)"),
        Option("password_env", str, "", "environment variable holding the password")))
    ca_file: str = setting("", "CA certificate(s) to verify the broker (PEM); enables TLS")
    cert_file: str = setting("", "client certificate (PEM) for brokers that require one")
    key_file: str = setting("", "client private key (PEM)")
    tls_insecure: bool = setting(False, "skip the broker host name check (never in production)")
    batch: int = setting(1, "records of one stream per message (1: no batching)", check=in_range(1, 1000))
    live_share: float = setting(0.5, "share of the in-flight window kept for live data while a backlog drains",
                                check=in_range(0.05, 1.0))
    format: str = setting("json", "wire format", choices=("json", "sparkplug"))
    group: str = setting("none", "\"sensor\": the readings of one sensor poll in one message (README, \"Wire "
                         "format\")", choices=("none", "sensor"))
    compress: str = setting("none", "\"deflate\": send data bodies as zlib streams", choices=("none", "deflate"))
    compress_min_bytes: int = setting(128, "compress bodies of at least this many bytes", check=in_range(1, 1 << 24))


@dataclass(frozen=True)
class SparkplugConfig:
    """Sparkplug B 3.0 settings (used when mqtt.format = "sparkplug")."""

    group_id: str = setting("", "Sparkplug group id (required with mqtt.format = \"sparkplug\")",
                            check=_sparkplug_id)
    edge_node_id: str = setting("", "edge node id (default: the agent id)", check=_sparkplug_id)
    primary_host_id: str = setting("", "primary host application id to wait for (empty: no primary host)",
                                   check=_sparkplug_id)
    # the spec's QoS 0; 1 is an opt-in deviation (README, "Sparkplug B 3.0": durability)
    data_qos: int = setting(0, "QoS of BIRTH/DATA messages (0 as the spec says; 1: PUBACK per message)",
                            choices=(0, 1))


COMMANDS = ("ping", "capture", "set", "reload")  # every command agent.commands knows


@dataclass(frozen=True)
class CommandsConfig:
    enabled: bool = setting(False, "accept commands on <prefix>/<id>/cmd/<name>")
    allow: tuple[str, ...] = setting(COMMANDS, "commands accepted", check=_allow_check)
    max_bytes: int = setting(4096, "largest command body accepted", check=in_range(16, 1 << 20))
    capture_max_s: float = setting(10.0, "longest raw capture a command may ask for", check=at_most(60))


@dataclass(frozen=True)
class OutboxConfig:
    commit_interval_ms: int = setting(200, "group-commit window", check=in_range(1, 60000))
    commit_max_records: int = setting(500, "commit early after this many records", check=in_range(1, 1000000))
    synchronous: str = setting("full", "SQLite synchronous mode", choices=("full", "normal", "extra", "off"))
    max_mb: float = setting(256.0, "outbox size bound in MB", check=at_most(1_000_000))
    max_age_h: float = setting(0.0, "drop records older than this many hours (0: keep until sent)",
                               check=at_most(24 * 366 * 10, positive_only=False))
    policy: str = setting("drop_oldest", "what to drop when the outbox is full", choices=("drop_oldest", "drop_newest"))
    min_free_mb: float = setting(4.0, "keep this much of the file system free: below it the policy drops records "
                                 "before SQLite runs out of space (0: off)", check=non_negative)


@dataclass(frozen=True)
class SensorConfig:
    """One `[[sensors]]` entry: the generic keys below; `options` are the driver's own keys (every other key of the
    table), already validated by its schema."""

    name: str = setting(REQUIRED, "the sensor's name, used as its stream name", check=_name_check)
    driver: str = setting(REQUIRED, "the driver, e.g. emulated.vibration")
    kind: str  # "slow" or "stream": the driver's
    options: Mapping[str, Any]  # the driver's own keys
    bus: str | None = setting("", "the bus it is wired to (a [buses.NAME] table)", convert=lambda s: s or None)
    interval_s: float = setting(1.0, "poll interval of a slow sensor", check=at_most(86400))
    window: int = setting(4096, "samples per feature window of a stream sensor", check=in_range(8, 1 << 22))
    hop: int = setting(0, "samples between window starts (default: the window, no overlap)", check=non_negative)
    # `enabled` has no field: a disabled sensor is left out of the configuration
    features: Mapping[str, Any] = setting({}, "feature settings", extra_keys=(
        Option("enabled", bool, True, "false skips the sensor"),))
    path: str = ""  # key path in the file, for messages at run time (`sensors[1]`)
    device: str = setting("", "Sparkplug device id (default: the sensor name)", check=_sparkplug_id)

    def __post_init__(self) -> None:
        if not self.hop:  # 0: one window after the other, no overlap
            object.__setattr__(self, "hop", self.window)


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


_BUS_OPTIONS_GENERIC = [
    Option("type", str, REQUIRED, "the bus type", choices=("gpio", "i2c", "serial", "modbus_tcp", "modbus_rtu")),
    Option("backend", str, "real", "real hardware or its emulated backend", choices=("real", "emulated")),
]
_SENSOR_DEFAULTS = defaults(SensorConfig)
_SENSOR_GENERIC_KEYS = {o.name for o in options(SensorConfig)}
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


def _read(cls: type, table: Mapping[str, Any], section: str, problems: _Problems) -> dict[str, Any]:
    """The keys of a section checked against the schema of `cls` (every problem reported with its key path), then
    converted to the fields they fill (`url` -> `broker`; a conversion's ValueError is the key's problem). Returns
    the values by key, and by field name where a conversion gave a field of another name or value."""
    values, errs = parse_options(options(cls), table)
    problems.extend(section, errs)
    for name, s, _ in _settings(cls):
        key = s.key or name
        if s.convert is not None and key in values:
            try:
                converted = s.convert(values[key])
            except ValueError as e:
                problems.add(f"{section}.{key}" if section else key, str(e))
                continue
            if name == key:
                values[key] = converted
            else:
                values[name] = converted
    return values


def _build(cls: type, values: Mapping[str, Any], **given: Any) -> Any:
    """`cls` from what `_read` returned: each setting from its value (floats as floats, arrays as tuples), the
    other fields from `given`."""
    kwargs = dict(given)
    for name, s, hint in _settings(cls):
        if name in kwargs:
            continue
        value = values[name] if name in values else values[s.key or name]
        origin = typing.get_origin(hint) or hint
        if origin is float and isinstance(value, int):
            value = float(value)
        elif origin is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def parse(raw: Mapping[str, Any], source: str, *, emulate: bool = False, digest: str = "") -> Config:
    """Validate a parsed TOML document. Raises ConfigError listing every problem."""
    problems = _Problems(source)
    for key in raw:
        if key not in _TOP_LEVEL:
            problems.add(key, f"unknown section (known: {', '.join(sorted(_TOP_LEVEL))})")

    agent_v = _read(AgentSection, _table(raw, "agent", problems), "agent", problems)

    mqtt_v = _read(MqttConfig, _table(raw, "mqtt", problems), "mqtt", problems)
    if mqtt_v.get("reconnect_min_s", 0) > mqtt_v.get("reconnect_max_s", 1e9):
        problems.add("mqtt.reconnect_min_s", "expected a value not above mqtt.reconnect_max_s")
    _resolve_secrets(mqtt_v, problems)
    for key in ("ca_file", "cert_file", "key_file"):
        if mqtt_v.get(key) and not os.path.isfile(mqtt_v[key]):
            problems.add(f"mqtt.{key}", f"expected a readable file, {mqtt_v[key]!r} does not exist")
    if bool(mqtt_v.get("cert_file")) != bool(mqtt_v.get("key_file")):
        problems.add("mqtt.cert_file" if not mqtt_v.get("cert_file") else "mqtt.key_file",
                     "expected cert_file and key_file together (a client certificate needs its key)")
    broker = mqtt_v.get("broker")
    if (mqtt_v.get("ca_file") or mqtt_v.get("cert_file")) and broker is not None and not broker.tls:
        # a CA or client certificate means TLS; without an explicit port, MQTT over TLS listens on 8883
        mqtt_v["broker"] = Broker(broker.host, broker.port if _has_port(mqtt_v["url"]) else 8883, True)

    commands_v = _read(CommandsConfig, _table(raw, "commands", problems), "commands", problems)
    table = _table(raw, "sparkplug", problems)
    before = len(problems.items)
    sparkplug_v = _read(SparkplugConfig, table, "sparkplug", problems)
    if mqtt_v.get("format") == "sparkplug" and len(problems.items) == before and not sparkplug_v.get("group_id"):
        problems.add("sparkplug.group_id", "missing: expected a group id when mqtt.format = \"sparkplug\"")
    if mqtt_v.get("format") == "sparkplug":
        for key in ("group", "compress"):
            if mqtt_v.get(key, "none") != "none":
                problems.add(f"mqtt.{key}", f"expected \"none\" with mqtt.format = \"sparkplug\" (Sparkplug B has "
                             f"its own encoding), found {mqtt_v[key]!r}")

    outbox_v = _read(OutboxConfig, _table(raw, "outbox", problems), "outbox", problems)

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
        before = len(problems.items)
        g = _read(SensorConfig, generic, path, problems)
        generic_ok = len(problems.items) == before
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
        _, feature_errs = validate_features(kind, g.get("features", {}))
        problems.extend(f"{path}.features", feature_errs)
        window = g.get("window", _SENSOR_DEFAULTS["window"])  # checked on its own above
        hop = g.get("hop") or window
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
        if generic_ok and not errs:
            sensors.append(_build(SensorConfig, g, kind=kind, options=values, path=path))

    if problems.items:
        raise ConfigError(problems.items)
    return Config(
        source=source,
        agent=_build(AgentSection, agent_v),
        mqtt=_build(MqttConfig, mqtt_v),
        outbox=_build(OutboxConfig, outbox_v),
        sparkplug=_build(SparkplugConfig, sparkplug_v),
        commands=_build(CommandsConfig, commands_v),
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
