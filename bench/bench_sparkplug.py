"""Sparkplug B measurement on the emulated plant: two sessions of `edge-agent run` (SIGINT, restart) against a local
Mosquitto, every message decoded with Eclipse Tahu's schema (tests/sparkplug_tahu.py, not the project's payload
code) and checked in arrival order. Prints a table. Not a test, not a benchmark against a reference: a measurement.

    .venv/bin/python bench/bench_sparkplug.py [--seconds 30] [--sessions 2] [--qos 0] [--scenario demo]

Reports: messages per type; ordering and payload violations by Sparkplug assertion id (tck-id-...); the bdSeq of
every NBIRTH and NDEATH; the largest DBIRTH (bytes, device); the time from CONNACK to the last DBIRTH of each
session. CONNACK time: the NBIRTH's own timestamp, taken in paho's on_connect (the CONNACK callback) just before
the NBIRTH is built; last DBIRTH: its arrival at a subscriber on the same machine (same wall clock).
Needs mosquitto and mqtt-spb-wrapper (installed by .ci/run).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from tests.mqtt_helpers import MosquittoBroker  # noqa: E402
from tests.sparkplug_tahu import Payload, SessionChecker  # noqa: E402

GROUP = "plant1"
NODE = "plant"


def plant_config(port: int, qos: int) -> str:
    text = (ROOT / "examples" / "plant.toml").read_text()
    text = re.sub(r'url = "mqtt://localhost:1883"', f'url = "mqtt://127.0.0.1:{port}"\nformat = "sparkplug"', text,
                  count=1)
    return text.replace("[buses.i2c1]", f'[sparkplug]\ngroup_id = "{GROUP}"\ndata_qos = {qos}\n\n[buses.i2c1]', 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each session after its NBIRTH")
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--qos", type=int, default=0, choices=(0, 1), help="sparkplug.data_qos")
    ap.add_argument("--scenario", default="", help="plant scenario (`edge-agent run --scenario`), e.g. demo")
    ap.add_argument("--speed", type=float, default=0.0, help="plant speed (`edge-agent run --speed`)")
    args = ap.parse_args()
    if Payload is None:
        print("mqtt-spb-wrapper is not installed (pip install --no-deps mqtt-spb-wrapper==2.1.2)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-sparkplug-"))
    # a subscriber that keeps its session: a stalled machine (keep-alive timeouts) must not hide messages from it
    broker = MosquittoBroker(work, extra_conf="queue_qos0_messages true\n").start()
    msgs: list[tuple[float, str, bytes]] = []
    lock = threading.Lock()
    ready = threading.Event()

    def on_message(c, u, m) -> None:
        with lock:
            msgs.append((time.time(), m.topic, bytes(m.payload)))

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-host", clean_session=False)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("spBv1.0/#", qos=1)
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port, keepalive=600)
    sub.loop_start()
    assert ready.wait(10)
    cfg = work / "plant.toml"
    cfg.write_text(plant_config(broker.port, args.qos))
    env = dict(os.environ, NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".venv" / "numba-cache")))
    exe = [sys.executable, "-m", "agent", "run", "--config", str(cfg), "--state-dir", str(work / "state")]
    exe += ["--scenario", args.scenario] if args.scenario else []
    exe += ["--speed", str(args.speed)] if args.speed else []

    def count(kind: str) -> int:
        with lock:
            return sum(1 for _, t, _ in msgs if t.split("/")[2] == kind)

    try:
        for _ in range(args.sessions):
            births = count("NBIRTH")
            deaths = count("NDEATH")
            proc = subprocess.Popen(exe, stdout=subprocess.DEVNULL, stderr=open(work / "agent.log", "ab"), env=env)
            deadline = time.monotonic() + 300
            while count("NBIRTH") == births and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            if count("NBIRTH") == births:
                print(f"no NBIRTH within 300 s; see {work / 'agent.log'}", file=sys.stderr)
                proc.kill()
                return 1
            time.sleep(args.seconds)
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            deadline = time.monotonic() + 10
            while count("NDEATH") == deaths and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        sub.disconnect()
        sub.loop_stop()
        broker.stop()

    check = SessionChecker(GROUP, NODE)
    connack_to_last_dbirth: list[float] = []
    nbirth_ts = None
    last_dbirth = None
    for arrived, topic, raw in msgs:
        kind = topic.split("/")[2]
        if kind == "NBIRTH":
            if nbirth_ts is not None and last_dbirth is not None:
                connack_to_last_dbirth.append(last_dbirth - nbirth_ts)
            nbirth_ts, last_dbirth = Payload.FromString(raw).timestamp / 1000.0, None
        elif kind == "DBIRTH" and nbirth_ts is not None and not check.data_seen:
            last_dbirth = arrived
        check.feed(topic, raw)
    if nbirth_ts is not None and last_dbirth is not None:
        connack_to_last_dbirth.append(last_dbirth - nbirth_ts)

    print(f"Sparkplug B on the emulated plant (examples/plant.toml), {args.sessions} sessions of {args.seconds:g} s, "
          f"data_qos {args.qos}, scenario {args.scenario or 'none'}, Python {sys.version.split()[0]}")
    print("| measurement | result |\n|---|---:|")
    for kind in ("NBIRTH", "DBIRTH", "DDATA", "DDEATH", "NDEATH", "NDATA", "NCMD", "DCMD"):
        if check.counts.get(kind):
            print(f"| {kind} messages | {check.counts[kind]} |")
    print(f"| ordering/payload violations | {len(check.violations)} |")
    print(f"| bdSeq (NBIRTH/NDEATH in order) | {' '.join(f'{k[1]}{v}' for k, v in check.bdseqs)} |")
    print(f"| largest DBIRTH | {check.largest_dbirth[0]} bytes ({check.largest_dbirth[1]}) |")
    for i, dt in enumerate(connack_to_last_dbirth, 1):
        print(f"| session {i}: CONNACK → last DBIRTH | {dt * 1000:.0f} ms |")
    for v in check.violations[:20]:
        print("violation:", v)
    log = (work / "agent.log").read_text()
    print(f"| agent runs / MQTT sessions (CONNACKs in the agent's log) | {args.sessions} / "
          f"{log.count('edge_agent.uplink: connected to')} |")
    print(f"(work directory, with the agent's log: {work})")
    return 1 if check.violations else 0


if __name__ == "__main__":
    sys.exit(main())
