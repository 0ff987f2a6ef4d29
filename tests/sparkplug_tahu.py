"""An independent Sparkplug B decoder for the tests and bench/bench_sparkplug.py: Eclipse Tahu's generated schema.

The `sparkplug_b_pb2` module that `mqtt-spb-wrapper` ships (protoc output of Tahu's `sparkplug_b.proto`) is read
as text and only its serialized file descriptor is used, in a private descriptor pool: nothing of the package is
imported (it pins paho-mqtt 1.x; .ci/run installs it with --no-deps), nothing of the project's own payload code
(`agent.sparkplug.proto`) is involved, and it cannot clash with another generated module in protobuf's default
pool. `Payload` is None when the package is not installed.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "org.eclipse.tahu.protobuf"


def _serialized_descriptor(pb2: Path) -> bytes:
    for node in ast.walk(ast.parse(pb2.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise RuntimeError(f"{pb2}: no AddSerializedFile(...) call: not a protoc-generated module")


def _load() -> tuple[Any, Any]:
    spec = importlib.util.find_spec("mqtt_spb_wrapper")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None, None
    pb2 = Path(next(iter(spec.submodule_search_locations))) / "spb_protobuf" / "sparkplug_b_pb2.py"
    fdp = descriptor_pb2.FileDescriptorProto.FromString(_serialized_descriptor(pb2))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    payload = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.Payload"))
    return payload, pool.FindEnumTypeByName(f"{PACKAGE}.DataType")


Payload, DataType = _load()


def datatype_name(code: int) -> str:
    return DataType.values_by_number[code].name if DataType is not None else str(code)


def value_of(m: Any) -> Any:
    """A decoded metric's value (None for is_null), without sign or type interpretation."""
    if m.is_null:
        return None
    which = m.WhichOneof("value")
    return getattr(m, which) if which else None


def properties(m: Any) -> dict[str, Any]:
    out = {}
    for k, v in zip(m.properties.keys, m.properties.values):
        which = v.WhichOneof("value")
        out[k] = getattr(v, which) if which else None
    return out


class SessionChecker:
    """Replays an edge node's messages (topic, raw payload) in arrival order and records every violation of the
    Sparkplug 3.0 rules it checks, by assertion id. Used by the tests and the bench alike."""

    def __init__(self, group: str, node: str) -> None:
        self.group, self.node = group, node
        self.violations: list[str] = []
        self.counts: dict[str, int] = {}
        self.bdseqs: list[tuple[str, int]] = []  # ("NBIRTH" | "NDEATH", bdSeq) in order
        self.largest_dbirth = (0, "")
        self.sessions = 0
        self._reset()

    def _reset(self) -> None:
        self.born = False
        self.seq: int | None = None
        self.data_seen = False
        self.devices: dict[str, dict[int, tuple[str, int]]] = {}  # born device -> alias -> (name, datatype)
        self.dead: set[str] = set()  # devices with a DDEATH in this session
        self.node_aliases: set[int] = set()
        self.bdseq: int | None = None

    def fail(self, tck: str, what: str) -> None:
        self.violations.append(f"{tck}: {what}")

    def feed(self, topic: str, raw: bytes) -> None:
        parts = topic.split("/")
        if parts[1] == "STATE":
            return
        if parts[:2] != ["spBv1.0", self.group] or parts[3] != self.node:
            self.fail("tck-id-topic-structure", topic)
            return
        kind = parts[2]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind in ("NCMD", "DCMD"):
            return
        p = Payload.FromString(raw)
        if kind in ("NBIRTH", "DBIRTH", "DDATA", "NDATA"):
            for m in p.metrics:
                if not m.HasField("timestamp"):
                    self.fail("tck-id-payloads-name-birth-data-requirement", f"{topic}: {m.name or m.alias} has no "
                              "timestamp")
                for k, v in zip(m.properties.keys, m.properties.values):
                    if k == "Quality" and (v.type != 3 or v.WhichOneof("value") != "int_value"):
                        self.fail("tck-id-payloads-propertyset-quality-value-type", f"{topic}: Quality type {v.type}")
        if kind == "NDEATH":
            bd = [value_of(m) for m in p.metrics if m.name == "bdSeq"]
            if len(bd) != 1:
                self.fail("tck-id-payloads-ndeath-bdseq", "NDEATH without exactly one bdSeq metric")
            else:
                self.bdseqs.append(("NDEATH", bd[0]))
            if p.HasField("seq"):
                self.fail("tck-id-payloads-ndeath-seq", "NDEATH carries a seq")
            self._reset()
            return
        if kind == "NBIRTH":
            self.sessions += 1
            self._reset()
            self.born = True
            if p.seq != 0:
                self.fail("tck-id-payloads-sequence-num-zero-nbirth", f"NBIRTH seq {p.seq}")
            names = {m.name: m for m in p.metrics}
            if "bdSeq" not in names:
                self.fail("tck-id-payloads-nbirth-bdseq", "NBIRTH without bdSeq")
            else:
                self.bdseq = value_of(names["bdSeq"])
                self.bdseqs.append(("NBIRTH", self.bdseq))
            rb = names.get("Node Control/Rebirth")
            if rb is None or rb.datatype != DataType.values_by_name["Boolean"].number or value_of(rb) is not False:
                self.fail("tck-id-payloads-nbirth-rebirth-req", "NBIRTH without Node Control/Rebirth = false")
            if not p.HasField("timestamp"):
                self.fail("tck-id-payloads-nbirth-timestamp", "NBIRTH without a timestamp")
            self.node_aliases = {m.alias for m in p.metrics}
            self.seq = 0
            return
        if not self.born:
            self.fail(f"tck-id-payloads-{kind.lower()}-order" if kind != "DDEATH" else "tck-id-topics-ddeath-seq-num",
                      f"{kind} before the session's NBIRTH")
            return
        expected = (self.seq + 1) % 256 if self.seq is not None else None
        if p.seq != expected:
            self.fail("tck-id-payloads-sequence-num-incrementing", f"{topic}: seq {p.seq}, expected {expected}")
        self.seq = p.seq
        device = parts[4] if len(parts) > 4 else ""
        if kind == "DBIRTH":
            if self.data_seen and device not in self.dead:
                self.fail("tck-id-payloads-dbirth-order", f"DBIRTH of {device} after data, with no DDEATH before")
            if not p.HasField("timestamp"):
                self.fail("tck-id-payloads-dbirth-timestamp", f"DBIRTH of {device} without a timestamp")
            metrics: dict[int, tuple[str, int]] = {}
            for m in p.metrics:
                if not m.name or not m.HasField("alias") or not m.HasField("datatype"):
                    self.fail("tck-id-payloads-alias-birth-requirement", f"DBIRTH {device}: metric {m.name!r} "
                              "without name, alias or datatype")
                if not m.is_null and m.WhichOneof("value") is None:
                    self.fail("tck-id-topics-dbirth-metrics", f"DBIRTH {device}/{m.name}: no value and not null")
                if m.alias in metrics or m.alias in self.node_aliases:
                    self.fail("tck-id-payloads-alias-uniqueness", f"DBIRTH {device}: alias {m.alias} reused")
                q = properties(m).get("Quality")
                if q is not None and q not in (0, 192, 500):
                    self.fail("tck-id-payloads-propertyset-quality-value-value",
                              f"DBIRTH {device}/{m.name}: Quality {q}")
                metrics[m.alias] = (m.name, m.datatype)
            self.devices[device] = metrics
            self.dead.discard(device)
            if len(raw) > self.largest_dbirth[0]:
                self.largest_dbirth = (len(raw), device)
            return
        if kind == "DDEATH":
            if device not in self.devices:
                self.fail("(edge-agent) ddeath-of-unborn-device", f"DDEATH of {device}, which is not born")
            self.devices.pop(device, None)
            self.dead.add(device)
            return
        if kind in ("DDATA", "NDATA"):
            self.data_seen = True
            born = self.devices.get(device) if kind == "DDATA" else None
            if kind == "DDATA" and born is None:
                self.fail("tck-id-payloads-ddata-order", f"DDATA of {device} before its DBIRTH")
                return
            for m in p.metrics:
                if m.name or not m.HasField("alias"):
                    self.fail("tck-id-payloads-alias-data-cmd-requirement", f"{topic}: a metric by name")
                if born is not None and m.alias not in born:
                    self.fail("tck-id-topics-dbirth-metric-reqs",
                              f"{topic}: alias {m.alias} is not in the device's DBIRTH")
                if m.HasField("datatype"):
                    self.fail("tck-id-payloads-metric-datatype-not-req", f"{topic}: a metric carries its datatype")
                q = properties(m).get("Quality")
                if q is not None and q not in (0, 192, 500):
                    self.fail("tck-id-payloads-propertyset-quality-value-value", f"{topic}: Quality {q}")
            return
        self.fail("tck-id-topic-structure", f"unexpected message type {kind}")
