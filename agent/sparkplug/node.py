"""Sparkplug B 3.0 edge node: the agent is the edge node, each configured sensor (or `device` group) a device.

A wire format for the uplink (`agent.uplink.WireFormat`): the outbox, PUBACK tracking, order and backlog handling
are the uplink's, exactly as for JSON; this module only decides which Sparkplug messages carry the records.

* Topics `spBv1.0/<group>/{NBIRTH,NDEATH,DBIRTH,DDATA,DDEATH}/<edge node>[/<device>]`; payloads are the spec's
  protobuf (`agent.sparkplug.proto`).
* `bdSeq`: incremented before every CONNECT, in the NDEATH Last Will registered with that CONNECT and in the NBIRTH
  that follows it; persisted in `<state dir>/sparkplug.json`, so it continues across restarts.
* `seq`: 0 in NBIRTH, then +1 (mod 256) for every other node message (DBIRTH, DDATA, DDEATH).
* NBIRTH always before any DBIRTH; a device's DBIRTH before its first DDATA and again whenever it gains a metric
  (births carry every metric with its alias and current value); DDATA carries the metrics of the records it
  publishes, by alias only, with `is_historical` for backlog. Slow channels are already report-by-exception
  (the signal core's deadbands), so DATA carries only changed metrics.
* A record whose quality is `bad` (the device did not answer) becomes a DDEATH; the next good one a new DBIRTH.
* NCMD `Node Control/Rebirth` = true: NBIRTH and every DBIRTH again. DCMD metric writes go through the agent's
  command handler (`set`: the same allow-list and limits as JSON commands).
* Primary host: with `sparkplug.primary_host_id`, nothing is born before that host's retained `STATE` says
  `online` (with a timestamp not older than the last seen); when it goes offline the node publishes NDEATH and
  reconnects (a new bdSeq), records keep accumulating in the outbox, and once the host is back the node is born
  again and the backlog is flushed as historical, in order, beside live data.

Data messages use QoS `sparkplug.data_qos` (default 1, so a record leaves the outbox only after the broker's
PUBACK; the specification asks for QoS 0, which `data_qos = 0` gives at the cost of losing what is in flight when
the link drops).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from agent import __version__
from agent.records import Record
from agent.sparkplug import proto
from agent.sparkplug.proto import Payload
from hal.types import now_ns

if TYPE_CHECKING:
    from agent.uplink import Uplink

log = logging.getLogger("edge_agent.sparkplug")

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
AGENT_DEVICE = "agent"  # device for records that belong to no sensor (outbox gap events, health)
_QUALITY = {"good": 192, "uncertain": 64, "bad": 0}  # OPC quality codes, as SCADA hosts expect


def _ms(ns: int) -> int:
    return ns // 1_000_000


def _datatype(value: Any) -> int:
    if isinstance(value, bool):
        return proto.BOOLEAN
    if isinstance(value, int):
        return proto.INT64
    if isinstance(value, float) or value is None:
        return proto.DOUBLE
    if isinstance(value, (bytes, bytearray)):
        return proto.BYTES
    return proto.STRING


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


def _set_value(m: Any, datatype: int, value: Any) -> None:
    m.datatype = datatype
    if value is None:
        m.is_null = True
    elif datatype == proto.DOUBLE:
        m.double_value = float(value)
    elif datatype in (proto.INT64, proto.DATETIME):
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


@dataclass
class _Metric:
    alias: int
    datatype: int
    value: Any = None
    timestamp_ms: int = 0
    unit: str = ""
    quality: str = "good"


@dataclass
class _Device:
    id: str
    metrics: dict[str, _Metric] = field(default_factory=dict)
    born: bool = False


class SparkplugFormat:
    fresh_session = True  # after a link loss: new session, new births, in-flight data re-sent from the outbox

    def __init__(self, uplink: "Uplink") -> None:
        self.uplink = uplink
        cfg = uplink.config.sparkplug
        self.group = cfg.group_id
        self.node = cfg.edge_node_id or uplink.agent_id
        self.primary = cfg.primary_host_id
        self.data_qos = cfg.data_qos
        self.stats = uplink.stats
        self.state_path = Path(uplink.outbox.state_dir) / "sparkplug.json"
        saved = self._load_state()
        self.bdseq = int(saved.get("bdseq", -1))  # the last one used; the next connect uses +1
        self.host_ts = int(saved.get("primary_host_timestamp", 0))
        self.seq = 0
        self.node_born = False
        self.host_online = not self.primary
        self._next_alias = 1
        self._node_aliases: dict[str, int] = {}
        self.devices: dict[str, _Device] = {}
        # stream → (device, metric-name prefix); sensor names are the longest-prefix owners of their streams
        self._sensors = sorted(((s.name, s.device or s.name) for s in uplink.config.sensors),
                               key=lambda t: -len(t[0]))
        self._route_cache: dict[str, tuple[str, str]] = {}

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
            ("Properties/Config Hash", proto.STRING, self.uplink.config.digest),
            ("Properties/Boot Time", proto.DATETIME, _ms(self.uplink.boot_ns)),
        ]
        for name, datatype, value in node_metrics:
            m = p.metrics.add()
            m.name = name
            m.alias = self._alias(f"node:{name}")
            m.timestamp = now
            _set_value(m, datatype, value)
        return p.SerializeToString()

    def _dbirth(self, dev: _Device) -> bytes:
        p = Payload()
        p.timestamp = _ms(now_ns())
        p.seq = self._next_seq()
        for name, met in dev.metrics.items():
            m = p.metrics.add()
            m.name = name
            m.alias = met.alias
            if met.timestamp_ms:
                m.timestamp = met.timestamp_ms
            _set_value(m, met.datatype, met.value)
            if met.unit:
                _add_property(m, "engUnit", proto.STRING, met.unit)
            _add_property(m, "Quality", proto.INT32, _QUALITY.get(met.quality, 0))
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
        if stream not in self._route_cache:
            for sensor, device in self._sensors:
                if stream == sensor or stream.startswith(sensor + "."):
                    rel = stream[len(sensor) + 1:]
                    prefix = "/".join(x for x in ((sensor if device != sensor else ""), rel) if x)
                    self._route_cache[stream] = (device, prefix)
                    break
            else:
                self._route_cache[stream] = (AGENT_DEVICE, stream)
        return self._route_cache[stream]

    def target_of(self, device: str, metric: str) -> str | None:
        """The `set` target (`SENSOR[.CHANNEL]`) a DCMD metric of a device names: the inverse of `route`."""
        for sensor, dev in self._sensors:
            if dev != device:
                continue
            if device == sensor:
                rest = metric
            elif metric == sensor or metric.startswith(sensor + "/"):
                rest = metric[len(sensor) + 1:]
            else:
                continue
            return sensor if rest in ("", "value") else f"{sensor}.{rest}"
        return None

    @staticmethod
    def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                SparkplugFormat._flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
        elif isinstance(value, (list, tuple)):
            out.append((prefix, json.dumps(value, separators=(",", ":"))))
        else:
            out.append((prefix, value))

    def record_metrics(self, record: Record) -> list[tuple[str, Any, str]]:
        """(metric name, value, unit) for one record."""
        _, prefix = self.route(record.stream)
        p = record.payload
        if record.kind == "reading":
            return [(prefix or "value", p.get("value"), str(p.get("unit") or ""))]
        if record.kind == "features":
            flat: list[tuple[str, Any]] = []
            self._flatten(prefix, p.get("features", {}), flat)
            return [(name, value, "") for name, value in flat]
        if record.kind == "capture":
            return [(prefix or "capture", json.dumps(p, separators=(",", ":")).encode(), "")]
        if record.kind in ("health", "status"):
            flat = []
            self._flatten(prefix or record.kind, p, flat)
            return [(name, value, "") for name, value in flat]
        return [(prefix or record.kind, json.dumps(p, separators=(",", ":")), "")]  # events: their JSON body

    # -- WireFormat -------------------------------------------------------------------------------------------

    def before_connect(self, client: mqtt.Client) -> None:
        self.bdseq = (self.bdseq + 1) % 256
        self._save_state()
        self.node_born = False
        self.host_online = not self.primary
        for dev in self.devices.values():
            dev.born = False
        client.will_set(self.topic("NDEATH"), self._ndeath(), qos=1, retain=False)

    def on_connect(self, client: mqtt.Client) -> bool:
        client.subscribe([(self.topic("NCMD"), 1), (self.topic("DCMD") + "/+", 1)])
        if self.primary:
            client.subscribe(f"{NAMESPACE}/STATE/{self.primary}", qos=1)
            log.info("waiting for the primary host %r to be online before the node birth", self.primary)
            return False
        self.birth(client)
        return True

    def birth(self, client: mqtt.Client) -> None:
        """NBIRTH, then a DBIRTH for every device known so far."""
        client.publish(self.topic("NBIRTH"), self._nbirth(), qos=self.data_qos)
        self.node_born = True
        self.stats.inc("sparkplug_births")
        for dev in self.devices.values():
            dev.born = False
            if dev.metrics:
                client.publish(self.topic("DBIRTH", dev.id), self._dbirth(dev), qos=self.data_qos)
        log.info("Sparkplug node %s/%s born (bdSeq %d, %d devices)", self.group, self.node, self.bdseq,
                 len(self.devices))

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
            self.uplink.set_ready(True)
        elif not online and self.node_born:
            log.warning("primary host %s went offline: NDEATH, keep storing, wait for it to return", self.primary)
            self.host_online = False
            self.uplink.set_ready(False)
            info = client.publish(self.topic("NDEATH"), self._ndeath(), qos=1)
            self.node_born = False
            self.stats.inc("sparkplug_host_offline")
            self.uplink.reconnect(after=info)  # a new session and bdSeq; born again when the host is back

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
        writer = getattr(self.uplink, "on_write", None)
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
        pass

    def encode(self, records: list[Record], historical: bool) -> list[tuple[str, bytes, int]]:
        device_id, _ = self.route(records[0].stream)
        dev = self.devices.setdefault(device_id, _Device(device_id))
        out: list[tuple[str, bytes, int]] = []
        good = [r for r in records if not (r.quality.value == "bad" and r.kind == "reading")]
        if not good:  # the device did not answer: one DDEATH, then nothing until it answers again
            if dev.born:
                out.append((self.topic("DDEATH", device_id), self._ddeath(dev), self.data_qos))
                self.stats.inc("sparkplug_device_deaths")
            return out
        data = Payload()
        data.timestamp = _ms(now_ns())
        rebirth = not dev.born
        for r in good:
            ts = _ms(r.ts_ns)
            for name, value, unit in self.record_metrics(r):
                met = dev.metrics.get(name)
                if met is None:
                    met = dev.metrics[name] = _Metric(self._alias(f"{device_id}:{name}"), _datatype(value))
                    rebirth = True
                elif not _fits(met.datatype, value):
                    met.datatype = _datatype(value)
                    rebirth = True
                met.value, met.timestamp_ms, met.quality = value, ts, r.quality.value
                if unit and unit != met.unit:
                    met.unit = unit
                    rebirth = True
                m = data.metrics.add()
                m.alias = met.alias
                m.timestamp = ts
                if historical:
                    m.is_historical = True
                _set_value(m, met.datatype, value)
                if r.kind == "reading" and r.quality.value != "good":
                    _add_property(m, "Quality", proto.INT32, _QUALITY[r.quality.value])
        if rebirth:
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
