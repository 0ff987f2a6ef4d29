"""Sparkplug B 3.0 edge node: the agent is the edge node, each configured sensor (or `device` group) a device.

A wire format for the uplink (`agent.uplink.WireFormat`): the outbox, PUBACK tracking, order and backlog handling
are the uplink's, exactly as for JSON; this module only decides which Sparkplug messages carry the records. What
metrics exist is `agent.sparkplug.metrics`'s (the catalog); this module must not invent metrics at run time.
It does not import the uplink: it gets the configuration, the state directory, the boot time and the counters, and
asks the link for what it needs through `LinkControl` (data may flow or must wait, reconnect, DCMD writes).

* Topics `spBv1.0/<group>/{NBIRTH,NDEATH,DBIRTH,DDATA,DDEATH}/<edge node>[/<device>]`; payloads are the spec's
  protobuf (`agent.sparkplug.proto`).
* `bdSeq`: steps once per MQTT CONNECT actually sent (paho's `on_socket_open`, called after the TCP/TLS connection
  is open and right before CONNECT is written; a refused or unreachable broker does not step it); the NDEATH Last
  Will registered with that CONNECT and the NBIRTH of that session carry it. Persisted in
  `<state dir>/sparkplug.json`, so it continues across restarts.
* `seq`: 0 in NBIRTH, then +1 (mod 256) for every other node message (DBIRTH, DDATA, DDEATH).
* Births: NBIRTH, then a DBIRTH for every device of the configuration, before any data. Each DBIRTH carries every
  metric the device will report in the session (from the catalog, known before the first record), with alias,
  datatype, unit and last value (null before the first one), so the set never changes within a session. DDATA
  carries the metrics of the records it publishes, by alias only, with `is_historical` for backlog. A metric that
  is not in the catalog (a bug) is not published: counted in `sparkplug_undeclared_metrics` and logged once.
* A device whose reading channels are all `bad` (it stopped answering) gets a DDEATH; when one answers again, a
  DBIRTH before its DDATA (the only DBIRTH after data, and only after a DDEATH). A single bad channel of a live
  device is a DDATA null value with Quality BAD.
* Quality (the `Quality` property): good → 192, uncertain → 0 (plus `edgeAgentQuality` = "uncertain"), bad → 0;
  see `QUALITY` below for why.
* A reload (`describe`) with the node born: a full rebirth, NBIRTH (seq 0, same bdSeq) and every DBIRTH, before
  any record of the new configuration. NCMD `Node Control/Rebirth` = true: the same. DCMD metric writes go
  through the agent's command handler (`set`: the same allow-list and limits as JSON commands).
* Primary host: with `sparkplug.primary_host_id`, nothing is born before that host's retained `STATE` says
  `online` (with a timestamp not older than the last seen); when it goes offline the node publishes NDEATH and
  reconnects (a new bdSeq), records keep accumulating in the outbox, and once the host is back the node is born
  again and the backlog is flushed as historical, in order, beside live data.

BIRTH and DATA use QoS `sparkplug.data_qos`: 0 (the specification's) by default; 1 is an opt-in deviation. Either
way a record leaves the outbox only once the broker is known to have read it (uplink: PUBACK for QoS 1, a later
UNSUBACK for QoS 0); README "Sparkplug B 3.0" says what that gives end to end.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import paho.mqtt.client as mqtt

from agent import __version__
from agent.config import Config
from agent.records import Record
from agent.sparkplug import proto
from agent.sparkplug.metrics import Catalog, MetricSpec, Router, catalog, record_metrics
from agent.sparkplug.proto import Payload
from agent.stats import Stats
from hal.types import now_ns

log = logging.getLogger("edge_agent.sparkplug")

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
# The `Quality` property: the specification allows 0 (BAD), 192 (GOOD) and 500 (STALE) only. edge-agent's
# `uncertain` (a value read but suspect: a clipped window, an interval with bad samples) becomes BAD, not GOOD: a
# host must not treat a suspect value as good; the value itself is still sent, and the string property
# `edgeAgentQuality` = "uncertain" tells it apart from a failed read (whose value is null). STALE is the host's
# to set (a node or device that died); an edge node never reports it.
QUALITY_BAD, QUALITY_GOOD, QUALITY_STALE = 0, 192, 500
QUALITY = {"good": QUALITY_GOOD, "uncertain": QUALITY_BAD, "bad": QUALITY_BAD}
_NO_VALUE = object()
_TYPE_NAMES = {proto.INT64: "Int64", proto.DOUBLE: "Double", proto.BOOLEAN: "Boolean", proto.STRING: "String",
               proto.BYTES: "Bytes"}


def _ms(ns: int) -> int:
    return ns // 1_000_000


def _fits(datatype: int, value: Any) -> bool:
    if value is None:
        return True
    if datatype == proto.DOUBLE:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if datatype == proto.INT64:
        return isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < (1 << 63)
    if datatype == proto.BOOLEAN:
        return isinstance(value, bool)
    if datatype == proto.BYTES:
        return isinstance(value, (bytes, bytearray))
    return isinstance(value, str)


def _coerce(datatype: int, value: Any) -> Any:
    """`value` as the declared datatype, or _NO_VALUE when it cannot be represented."""
    if datatype == proto.INT64 and isinstance(value, float) and value.is_integer():
        return int(value)
    if datatype == proto.BOOLEAN and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if datatype == proto.STRING and not isinstance(value, (bytes, bytearray)):
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    if datatype == proto.BYTES and isinstance(value, str):
        return value.encode()
    return _NO_VALUE


def _set_value(m: Any, datatype: int, value: Any, with_type: bool = True) -> None:
    if with_type:  # births only: DATA SHOULD NOT carry it (tck-id-payloads-metric-datatype-not-req)
        m.datatype = datatype
    if value is None:
        m.is_null = True
    elif datatype == proto.DOUBLE:
        m.double_value = float(value)
    elif datatype in (proto.INT64, proto.UINT64, proto.DATETIME):
        m.long_value = int(value) & 0xFFFFFFFFFFFFFFFF  # two's complement for negative values, as the spec says
    elif datatype == proto.BOOLEAN:
        m.boolean_value = bool(value)
    elif datatype == proto.BYTES:
        m.bytes_value = bytes(value)
    else:
        m.string_value = str(value)


def metric_value(m: Any) -> Any:
    """The Python value of a decoded metric (for DCMD writes)."""
    if m.is_null:
        return None
    which = m.WhichOneof("value")
    if which is None:
        return None
    v = getattr(m, which)
    if which in ("int_value", "long_value"):
        bits = 32 if which == "int_value" else 64
        if m.datatype in (proto.INT8, proto.INT16, proto.INT32, proto.INT64) and v >= 1 << (bits - 1):
            v -= 1 << bits
    return v


def _add_property(m: Any, key: str, datatype: int, value: Any) -> None:
    m.properties.keys.append(key)
    pv = m.properties.values.add()
    pv.type = datatype
    if datatype == proto.STRING:
        pv.string_value = str(value)
    elif datatype == proto.INT32:
        pv.int_value = int(value) & 0xFFFFFFFF
    elif datatype == proto.BOOLEAN:
        pv.boolean_value = bool(value)


def _add_quality(m: Any, quality: str) -> None:
    _add_property(m, "Quality", proto.INT32, QUALITY.get(quality, QUALITY_BAD))
    if quality == "uncertain":
        _add_property(m, "edgeAgentQuality", proto.STRING, quality)


@dataclass
class _Metric:
    alias: int
    spec: MetricSpec
    value: Any = None
    timestamp_ms: int = 0
    quality: str = ""  # "" until the first value


@dataclass
class _Device:
    id: str
    metrics: dict[str, _Metric] = field(default_factory=dict)
    born: bool = False
    bad: set[str] = field(default_factory=set)  # reading metrics whose last value was bad
    readings: set[str] = field(default_factory=set)  # the device's reading metrics (all bad: the device is dead)


@runtime_checkable
class LinkControl(Protocol):
    """What the edge node asks of the link that carries it (the uplink implements it). Called on the link's own
    thread, from the format's callbacks."""

    on_write: Callable[[str, Any], None] | None  # DCMD metric writes (target, value); None: commands are off

    def set_ready(self, ready: bool) -> None:
        """Data may flow (True: the node is born) or must wait (False: the primary host is offline)."""

    def reconnect(self, after: mqtt.MQTTMessageInfo | None = None) -> None:
        """End the session cleanly once `after` is acknowledged, then connect again (a new bdSeq)."""


class SparkplugFormat:
    fresh_session = True  # after a link loss: new session, new births, in-flight data re-sent from the outbox

    def __init__(self, config: Config, link: LinkControl, *, state_dir: Path, boot_ns: int, stats: Stats) -> None:
        self.link = link
        self.boot_ns = boot_ns
        cfg = config.sparkplug
        self.group = cfg.group_id
        self.node = cfg.edge_node_id or config.agent.id
        self.primary = cfg.primary_host_id
        self.data_qos = cfg.data_qos
        self.stats = stats
        self.state_path = Path(state_dir) / "sparkplug.json"
        saved = self._load_state()
        self.bdseq = int(saved.get("bdseq", -1))  # the last one sent in a CONNECT; the next CONNECT uses +1
        self.host_ts = int(saved.get("primary_host_timestamp", 0))
        self.seq = 0
        self.node_born = False
        self.host_online = not self.primary
        self.connects_sent = 0
        self._next_alias = 1
        self._node_aliases: dict[str, int] = {}
        self.config = config
        self.router = Router(list(self.config.sensors))
        self.devices: dict[str, _Device] = {}
        self._warned: set[str] = set()
        self._catalog: Catalog = {}
        # until describe() names the drivers (the agent does before the uplink starts), a catalog of the
        # configuration alone, built at the first birth
        self._pending: tuple[Config, Catalog | None] | None = (self.config, None)

    def describe(self, config: Config, sources: dict[str, Any]) -> None:
        """The configuration and its drivers (at start and after a reload). Safe from any thread: applied on the
        uplink thread, with a full rebirth (NBIRTH, every DBIRTH) if the node is born."""
        cat = catalog(config, sources)
        if config.digest == self.config.digest and cat == self._catalog and self._pending is None:
            return  # the same configuration read again: nothing to announce
        self._pending = (config, cat)

    def _apply(self, config: Config, cat: Catalog) -> None:
        old = self.devices
        self.config = config
        self._catalog = cat
        self.router = Router(list(config.sensors))
        self.devices = {}
        for device_id, specs in cat.items():
            dev = self.devices[device_id] = _Device(device_id)
            for name, spec in specs.items():
                met = _Metric(self._alias(f"{device_id}:{name}"), spec)
                prev = old.get(device_id, _Device(device_id)).metrics.get(name)
                if prev is not None and prev.spec.datatype == spec.datatype:
                    met.value, met.timestamp_ms, met.quality = prev.value, prev.timestamp_ms, prev.quality
                dev.metrics[name] = met
                if spec.reading:
                    dev.readings.add(name)

    def _take_pending(self) -> bool:
        pending, self._pending = self._pending, None
        if pending is None:
            return False
        config, cat = pending
        self._apply(config, cat if cat is not None else catalog(config, {}))
        return True

    # -- persisted state --------------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s (%s): bdSeq starts again at 0", self.state_path, e)
            return {}

    def _save_state(self) -> None:
        data = json.dumps({"bdseq": self.bdseq, "primary_host_timestamp": self.host_ts}).encode()
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.state_path.parent, prefix=".sparkplug-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except OSError as e:  # a full disk must not stop the uplink; bdSeq then restarts from the file's value
            self.stats.inc("sparkplug_state_write_errors")
            log.error("cannot persist the Sparkplug bdSeq to %s: %s", self.state_path, e)

    # -- topics and payloads ----------------------------------------------------------------------------------

    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group}/{kind}/{self.node}"
        return f"{base}/{device}" if device else base

    def _next_seq(self) -> int:
        s = self.seq
        self.seq = (self.seq + 1) % 256
        return s

    def _alias(self, key: str) -> int:
        if key not in self._node_aliases:
            self._node_aliases[key] = self._next_alias  # aliases are unique across the node and all its devices
            self._next_alias += 1
        return self._node_aliases[key]

    def _ndeath(self) -> bytes:
        p = Payload()
        p.timestamp = _ms(now_ns())
        m = p.metrics.add()
        m.name = "bdSeq"
        _set_value(m, proto.INT64, self.bdseq)
        return p.SerializeToString()

    def _nbirth(self) -> bytes:
        p = Payload()
        now = _ms(now_ns())
        p.timestamp = now
        p.seq = 0
        self.seq = 1
        node_metrics: list[tuple[str, int, Any]] = [
            ("bdSeq", proto.INT64, self.bdseq),
            (REBIRTH, proto.BOOLEAN, False),
            ("Properties/Agent Version", proto.STRING, __version__),
            ("Properties/Config Hash", proto.STRING, self.config.digest),
            ("Properties/Boot Time", proto.DATETIME, _ms(self.boot_ns)),
        ]
        for name, datatype, value in node_metrics:
            m = p.metrics.add()
            m.name = name
            m.alias = self._alias(f"node:{name}")
            m.timestamp = now
            _set_value(m, datatype, value)
        return p.SerializeToString()

    def _dbirth(self, dev: _Device) -> bytes:
        """Every metric the device will report in this session, with its alias, datatype and last value (null
        before the first one)."""
        p = Payload()
        now = _ms(now_ns())
        p.timestamp = now
        p.seq = self._next_seq()
        for name, met in dev.metrics.items():
            m = p.metrics.add()
            m.name = name
            m.alias = met.alias
            m.timestamp = met.timestamp_ms or now
            _set_value(m, met.spec.datatype, met.value if _fits(met.spec.datatype, met.value) else None)
            if met.spec.unit:
                _add_property(m, "engUnit", proto.STRING, met.spec.unit)
            if met.quality:
                _add_quality(m, met.quality)
        dev.born = True
        return p.SerializeToString()

    def _ddeath(self, dev: _Device) -> bytes:
        p = Payload()
        p.timestamp = _ms(now_ns())
        p.seq = self._next_seq()
        dev.born = False
        return p.SerializeToString()

    # -- records → metrics ------------------------------------------------------------------------------------

    def route(self, stream: str) -> tuple[str, str]:
        """(device id, metric-name prefix) of a stream."""
        return self.router.route(stream)

    def target_of(self, device: str, metric: str) -> str | None:
        return self.router.target_of(device, metric)

    def record_metrics(self, record: Record) -> list[tuple[str, Any]]:
        """(metric name, value) for one record."""
        return record_metrics(record, self.route(record.stream)[1])

    def _warn_once(self, key: str, counter: str, message: str, *args: Any) -> None:
        self.stats.inc(counter)
        if key not in self._warned:
            self._warned.add(key)
            log.error(message + " (logged once; counted in %s)", *args, counter)

    # -- WireFormat -------------------------------------------------------------------------------------------

    def before_connect(self, client: mqtt.Client) -> None:
        """Before every connect attempt. bdSeq steps only once a CONNECT is actually sent (`on_socket_open`)."""
        self.node_born = False
        self.host_online = not self.primary
        for dev in self.devices.values():
            dev.born = False
        client.on_socket_open = lambda c, userdata, sock: self.on_socket_open(c)

    def on_socket_open(self, client: mqtt.Client) -> None:
        """paho calls this once the TCP (and TLS) connection is open, immediately before it sends CONNECT: the
        only point at which a CONNECT is certain to go out. bdSeq steps here, and the NDEATH Will registered with
        this CONNECT carries it, as will this session's NBIRTH. A refused or unreachable broker never gets here."""
        self.bdseq = (self.bdseq + 1) % 256
        self.connects_sent += 1
        self._save_state()
        client.will_set(self.topic("NDEATH"), self._ndeath(), qos=1, retain=False)

    def on_connect(self, client: mqtt.Client) -> bool:
        client.subscribe([(self.topic("NCMD"), 1), (self.topic("DCMD") + "/+", 1)])
        if self.primary:
            client.subscribe(f"{NAMESPACE}/STATE/{self.primary}", qos=1)
            log.info("waiting for the primary host %r to be online before the node birth", self.primary)
            return False
        self.birth(client)
        return True

    def _birth_messages(self) -> list[tuple[str, bytes, int]]:
        """NBIRTH, then a DBIRTH for every device of the configuration, before any data."""
        self._take_pending()
        out = [(self.topic("NBIRTH"), self._nbirth(), self.data_qos)]
        for dev in self.devices.values():
            out.append((self.topic("DBIRTH", dev.id), self._dbirth(dev), self.data_qos))
        self.node_born = True
        self.stats.inc("sparkplug_births")
        self.stats.inc("sparkplug_device_births", len(self.devices))
        log.info("Sparkplug node %s/%s born (bdSeq %d, %d devices)", self.group, self.node, self.bdseq,
                 len(self.devices))
        return out

    def birth(self, client: mqtt.Client) -> None:
        for topic, body, qos in self._birth_messages():
            client.publish(topic, body, qos=qos)

    def on_message(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> bool:
        topic = msg.topic
        try:
            if self.primary and topic == f"{NAMESPACE}/STATE/{self.primary}":
                self._on_state(client, bytes(msg.payload))
            elif topic == self.topic("NCMD"):
                self._on_ncmd(client, bytes(msg.payload))
            elif topic.startswith(self.topic("DCMD") + "/"):
                self._on_dcmd(topic.rsplit("/", 1)[1], bytes(msg.payload))
            else:
                return False
        except Exception as e:  # garbage from the broker must never take the uplink down
            self.stats.inc("sparkplug_bad_messages")
            log.warning("ignored a malformed Sparkplug message on %s: %s: %s", topic, type(e).__name__, e)
        return True

    def _on_state(self, client: mqtt.Client, payload: bytes) -> None:
        try:
            state = json.loads(payload)
            online, ts = bool(state["online"]), int(state["timestamp"])
        except (ValueError, KeyError, TypeError):
            self.stats.inc("sparkplug_bad_messages")
            log.warning("ignored a malformed STATE from %s: %r", self.primary, payload[:100])
            return
        if ts < self.host_ts:
            log.info("ignored a stale STATE from %s (timestamp %d < %d)", self.primary, ts, self.host_ts)
            return
        self.host_ts = ts
        self._save_state()
        if online and not self.node_born:
            self.host_online = True
            log.info("primary host %s is online", self.primary)
            self.birth(client)
            self.link.set_ready(True)
        elif not online and self.node_born:
            log.warning("primary host %s went offline: NDEATH, keep storing, wait for it to return", self.primary)
            self.host_online = False
            self.link.set_ready(False)
            info = client.publish(self.topic("NDEATH"), self._ndeath(), qos=1)
            self.node_born = False
            self.stats.inc("sparkplug_host_offline")
            self.link.reconnect(after=info)  # a new session and bdSeq; born again when the host is back

    def _on_ncmd(self, client: mqtt.Client, payload: bytes) -> None:
        p = Payload.FromString(payload)
        rebirth_alias = self._node_aliases.get(f"node:{REBIRTH}")
        for m in p.metrics:
            if (m.name == REBIRTH or (not m.name and m.alias == rebirth_alias)) and metric_value(m) is True:
                log.info("rebirth requested by NCMD")
                self.stats.inc("sparkplug_rebirths")
                if self.node_born:
                    self.birth(client)
                return
        log.info("ignored an NCMD without %s = true", REBIRTH)

    def _on_dcmd(self, device: str, payload: bytes) -> None:
        p = Payload.FromString(payload)
        dev = self.devices.get(device)
        by_alias = {met.alias: name for name, met in dev.metrics.items()} if dev else {}
        writer = self.link.on_write
        for m in p.metrics:
            name = m.name or by_alias.get(m.alias, "")
            if not name:
                log.warning("DCMD for %s: unknown alias %d ignored", device, m.alias)
                self.stats.inc("sparkplug_bad_messages")
                continue
            if writer is None:
                log.warning("DCMD %s/%s ignored: commands are not enabled", device, name)
                self.stats.inc("commands_rejected")
                continue
            target = self.target_of(device, name)
            if target is None:
                log.warning("DCMD %s/%s ignored: no configured sensor has that metric", device, name)
                self.stats.inc("commands_rejected")
                continue
            writer(target, metric_value(m))

    def tick(self, client: mqtt.Client) -> None:
        """A reload's new configuration: a full rebirth before any record of it is published."""
        if self._pending is not None and self._pending[1] is not None and self.node_born:
            self.stats.inc("sparkplug_rebirths")
            log.info("configuration changed: rebirth")
            self.birth(client)

    def encode(self, records: list[Record], historical: bool) -> list[tuple[str, bytes, int]]:
        out: list[tuple[str, bytes, int]] = []
        if self._pending is not None and self.node_born:  # described after tick(): births first, before any data
            self.stats.inc("sparkplug_rebirths")
            out.extend(self._birth_messages())
        device_id, _ = self.route(records[0].stream)
        dev = self.devices.get(device_id)
        if dev is None:
            self._warn_once(f"device:{device_id}", "sparkplug_undeclared_metrics",
                            "records of %s belong to no device born in this session (device %r): not published",
                            records[0].stream, device_id)
            return out
        data = Payload()
        data.timestamp = _ms(now_ns())
        for r in records:
            ts = _ms(r.ts_ns)
            quality = r.quality.value
            for name, value in self.record_metrics(r):
                met = dev.metrics.get(name)
                if met is None:
                    self._warn_once(f"{device_id}:{name}", "sparkplug_undeclared_metrics",
                                    "metric %s of device %s is not in its DBIRTH (not declared by the driver or the "
                                    "features): not published", name, device_id)
                    continue
                if met.spec.reading:
                    if quality == "bad":
                        dev.bad.add(name)
                    else:
                        dev.bad.discard(name)
                if not _fits(met.spec.datatype, value):
                    coerced = _coerce(met.spec.datatype, value)
                    if coerced is _NO_VALUE:
                        self._warn_once(f"type:{device_id}:{name}", "sparkplug_type_mismatches",
                                        "metric %s of device %s: expected %s, got %r: sent as null with Quality bad",
                                        name, device_id, _TYPE_NAMES.get(met.spec.datatype, met.spec.datatype), value)
                        value, quality = None, "bad"
                    else:
                        value = coerced
                changed_quality = quality != (met.quality or "good")
                met.value, met.timestamp_ms, met.quality = value, ts, quality
                m = data.metrics.add()
                m.alias = met.alias
                m.timestamp = ts
                if historical:
                    m.is_historical = True
                _set_value(m, met.spec.datatype, value, with_type=False)
                if quality != "good" or changed_quality:
                    _add_quality(m, quality)
        readings = dev.readings
        if readings and readings <= dev.bad:  # every channel of the device failed: it is dead until one answers
            if dev.born:
                out.append((self.topic("DDEATH", device_id), self._ddeath(dev), self.data_qos))
                self.stats.inc("sparkplug_device_deaths")
            elif any(r.kind != "reading" for r in records):  # e.g. the empty interval statistics of a dead channel
                self.stats.inc("sparkplug_records_of_dead_devices", len(records))
            return out
        if not data.metrics:
            return out
        if not dev.born:  # it died (DDEATH) and came back
            out.append((self.topic("DBIRTH", device_id), self._dbirth(dev), self.data_qos))
            self.stats.inc("sparkplug_device_births")
        data.seq = self._next_seq()
        out.append((self.topic("DDATA", device_id), data.SerializeToString(), self.data_qos))
        return out

    def on_stop(self, client: mqtt.Client) -> mqtt.MQTTMessageInfo | None:
        if not self.node_born and self.primary:
            return None
        self.node_born = False
        return client.publish(self.topic("NDEATH"), self._ndeath(), qos=1)
