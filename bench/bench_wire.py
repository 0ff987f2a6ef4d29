"""Bytes on the wire per value: 10 float32 Modbus registers polled every second, published four ways.

The agent runs in this process (`agent.pipeline.Pipeline`: Modbus driver, processing, SQLite outbox, uplink) and
reads a Modbus TCP slave over the loopback (`hal.emulated.modbus.EmulatedModbusServer`, a pymodbus server on a free
port, used as a *real* bus) whose registers this script moves every 0.25 s (a random walk, 7 significant digits as a
float32 carries). A subscriber on a local Mosquitto counts every message of the sensor's streams.

Counting: each MQTT 3.1.1 PUBLISH (QoS 1) as it is on the wire between the agent and the broker: fixed header
(1 byte + the remaining length's varint, 1-4 bytes) + topic length (2) + topic + packet id (2) + payload. TCP/IP
headers are not counted; the broker's PUBACK (4 bytes per message) is shown separately. Values are counted by
decoding the messages (`tests/test_wire_group.decode`: inflate, expand, unpack).

Reference in the same run: for every poll, the message ThingsBoard IoT Gateway would send for the same values
(its documented gateway telemetry API: topic `v1/gateway/telemetry`, body
`{"<device>":[{"ts":<ms>,"values":{"<key>":<value>,...}}]}`, compact JSON), counted the same way. ThingsBoard's own
process is not run here; issue 19 measured 22 B per value for it on this workload.

Modes, interleaved (A B C D A B C D ...): `plain` (one record per message), `batch` (`mqtt.batch = 10`: groups
records of one stream only), `group` (`mqtt.group = "sensor"`), `group+deflate` (plus `mqtt.compress =
"deflate"`, default `compress_min_bytes`). Two register sets: one unit for all ten (`temperatures`), and a power
meter's mix of units (`meter`: a unit that differs from the most common one is repeated per value).

    .venv/bin/python bench/bench_wire.py [--polls 12] [--repeats 2]
"""

from __future__ import annotations

import argparse
import calendar
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import parse  # noqa: E402
from agent.pipeline import Pipeline  # noqa: E402
from hal.emulated.modbus import EmulatedModbusServer  # noqa: E402
from hal.modbus.registermap import RegisterMap, parse_registers  # noqa: E402
from tests.mqtt_helpers import Message, MosquittoBroker, Subscriber  # noqa: E402
from tests.agent.test_wire_group import decode  # noqa: E402

SETS = {
    "temperatures": [(f"zone_{k:02d}_temp", "degC", 60.0 + 4 * k) for k in range(10)],
    "meter": [("voltage_l1", "V", 230.1), ("voltage_l2", "V", 229.7), ("voltage_l3", "V", 231.2),
              ("current_l1", "A", 12.31), ("current_l2", "A", 11.87), ("current_l3", "A", 12.05),
              ("power_total", "kW", 8.214), ("power_factor", "", 0.91), ("frequency", "Hz", 50.01),
              ("energy_import", "kWh", 123456.7)],
}
MODES = {"plain": {}, "batch": {"batch": 10}, "group": {"group": "sensor"},
         "group+deflate": {"group": "sensor", "compress": "deflate"}}
SENSOR = "meter"


def varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def publish_bytes(topic: str, payload: bytes, qos: int = 1) -> int:
    """An MQTT 3.1.1 PUBLISH packet's size: fixed header + topic (length-prefixed) + packet id + payload."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + len(payload)
    return 1 + varint_len(remaining) + remaining


def tb_reference(polls: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(bytes, values) of ThingsBoard-gateway-shaped messages for the same polls."""
    total = values = 0
    for ts, vals in polls.items():
        ms = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) * 1000 + int(ts[20:23])
        body = json.dumps({SENSOR: [{"ts": ms, "values": vals}]}, separators=(",", ":")).encode()
        total += publish_bytes("v1/gateway/telemetry", body)
        values += len(vals)
    return total, values


class Slave:
    """The Modbus TCP slave: 10 float32 input registers, moved every 0.25 s."""

    def __init__(self, registers: list[tuple[str, str, float]]) -> None:
        self.registers = registers
        items = [{"name": n, "address": 2 * k, "table": "input", "type": "f32", "unit": u}
                 for k, (n, u, _) in enumerate(registers)]
        regs, errors = parse_registers(items)
        assert not errors, errors
        self.server = EmulatedModbusServer("bench", "modbus_tcp")
        self.server.add_device(1, RegisterMap(tuple(regs)))
        self.server.ensure_running()
        self.values = {n: v for n, _, v in registers}
        self._stop = threading.Event()
        self._move()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _move(self) -> None:
        for n, v in self.values.items():
            v = v * (1 + random.gauss(0, 0.002)) if n != "energy_import" else v + random.uniform(0, 0.01)
            self.values[n] = float(f"{v:.7g}")
            self.server.set_value(1, n, self.values[n])

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._move()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.server.close()


def run_mode(broker: MosquittoBroker, slave: Slave, set_name: str, mode: str, polls: int, work: Path,
             n: int) -> dict[str, Any]:
    host, port = slave.server.endpoint
    raw = {
        "agent": {"id": "press-7"},
        "mqtt": {"url": broker.url, **MODES[mode]},
        "buses": {"plc": {"type": "modbus_tcp", "backend": "real", "host": host, "port": port}},
        "sensors": [{"name": SENSOR, "driver": "modbus", "bus": "plc", "unit": 1, "interval_s": 1.0,
                     "registers": [{"name": r, "address": 2 * k, "table": "input", "type": "f32", "unit": u}
                                   for k, (r, u, _) in enumerate(slave.registers)]}],
    }
    cfg = parse(raw, "<bench>")
    sub = Subscriber(broker.port, "edge/press-7/+/+", client_id=f"bench-wire-{n}")
    agent = Pipeline(cfg, work / f"state-{n}")
    agent.start()
    want = polls * len(slave.registers)

    def received(s: Subscriber) -> list[Message]:
        return [m for m in s.snapshot() if m.topic.split("/")[3].split(".")[0] == SENSOR]

    def count() -> int:
        return sum(len(decode(m)) for m in received(sub))

    deadline = time.monotonic() + polls * 3 + 30
    try:
        while count() < want and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        agent.stop(drain_s=5)
        time.sleep(0.5)
        sub.close()
    msgs = received(sub)
    polls_seen: dict[str, dict[str, Any]] = {}
    values = 0
    total = 0
    for m in msgs:
        bodies = decode(m)
        values += len(bodies)
        total += publish_bytes(m.topic, m.payload)
        for b in bodies:
            polls_seen.setdefault(b["ts"], {})[b["stream"].split(".", 1)[1]] = b["value"]
    tb_bytes, tb_values = tb_reference(polls_seen)
    return {"set": set_name, "mode": mode, "messages": len(msgs), "values": values, "bytes": total,
            "tb_bytes": tb_bytes, "tb_values": tb_values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--polls", type=int, default=12, help="polls (seconds) per run")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved turns per mode")
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work).start()
        n = 0
        try:
            for set_name, registers in SETS.items():
                slave = Slave(registers)
                try:
                    for _ in range(args.repeats):
                        for mode in MODES:
                            n += 1
                            r = run_mode(broker, slave, set_name, mode, args.polls, work, n)
                            results.append(r)
                            print(f"  {set_name:12s} {mode:14s} {r['values']:4d} values in {r['messages']:4d} "
                                  f"messages, {r['bytes'] / max(1, r['values']):6.1f} B/value", flush=True)
                finally:
                    slave.close()
        finally:
            broker.stop()
    print()
    print(f"10 float32 registers, 1 s polls, {args.polls} polls x {args.repeats} interleaved turns per mode; "
          "MQTT 3.1.1 PUBLISH bytes (fixed header + topic + packet id + payload) per value, median of turns")
    print()
    print("| registers | mode | messages per poll | B per value | + PUBACK | ÷ ThingsBoard-shaped reference |")
    print("|---|---|---:|---:|---:|---:|")
    for set_name in SETS:
        tb = [r["tb_bytes"] / r["tb_values"] for r in results if r["set"] == set_name and r["tb_values"]]
        tb_med = statistics.median(tb)
        for mode in MODES:
            rs = [r for r in results if r["set"] == set_name and r["mode"] == mode and r["values"]]
            per_value = statistics.median(r["bytes"] / r["values"] for r in rs)
            with_ack = statistics.median((r["bytes"] + 4 * r["messages"]) / r["values"] for r in rs)
            per_poll = statistics.median(r["messages"] / r["values"] * 10 for r in rs)
            print(f"| {set_name} | {mode} | {per_poll:.1f} | {per_value:.1f} | {with_ack:.1f} | "
                  f"{per_value / tb_med:.2f} |")
        print(f"| {set_name} | ThingsBoard-shaped reference (same values) | 1.0 | {tb_med:.1f} | "
              f"{statistics.median(t + 0.4 for t in tb):.1f} | 1.00 |")


if __name__ == "__main__":
    main()
