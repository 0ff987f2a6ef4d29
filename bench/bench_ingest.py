"""Fleet ingest benchmark: `edge-agent ingest` into PostgreSQL; prints a table. Not a test.

    .venv/bin/python bench/bench_ingest.py [--records 200000] [--batch 50]

Starts its own PostgreSQL (Debian's binaries, initdb in a temporary directory, fsync on: the defaults) and
Mosquitto on free loopback ports. Measures, in one run:

* throughput of one and of two `edge-agent ingest` processes (one shared subscription group): the records are
  queued at the broker for the ingest sessions first (JSON arrays of `--batch` records of one stream, the wire
  format of `mqtt.batch`), then the processes start; records/s = records / (last commit - first commit), from the
  `received` column (the transaction time of each batch);
* the reference: a raw psycopg COPY of the same rows (already parsed) into the same table with the same primary key,
  in transactions of 5,000 rows: what the database takes without MQTT, JSON, checks and duplicate handling;
* end-to-end latency with the agent's real outbox and uplink: records put at a steady rate into a SQLite outbox
  (group commit every 20 ms), forwarded by the uplink (QoS 1, `mqtt.batch`), stored by one ingest process; latency
  = `received` (the ingest transaction) - the record's time (when it was put, before its outbox commit).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.fleet.ingest import ensure_schema, parse_message  # noqa: E402
from agent.records import Emit, Record, encode  # noqa: E402
from hal.types import Quality, now_ns  # noqa: E402
from tests.agent.fleet.pg_helpers import Postgres  # noqa: E402
from tests.mqtt_helpers import MosquittoBroker  # noqa: E402

AGENTS, STREAMS = 20, 4
T0 = 1_796_000_000_000_000_000


def messages(n: int, batch: int) -> list[tuple[str, bytes]]:
    """About n readings of AGENTS x STREAMS streams, `batch` per message (one stream per message)."""
    out = []
    per_stream = n // (AGENTS * STREAMS)
    for s0 in range(0, per_stream, batch):
        for a in range(AGENTS):
            for s in range(STREAMS):
                recs = [Record(0, f"s{s}", q, T0 + q * 10_000_000, "reading", Quality.GOOD,
                               {"value": 20.0 + (q % 100) / 10, "unit": "degC"})
                        for q in range(s0, min(s0 + batch, per_stream))]
                parts = [encode(r, f"agent{a:02d}", "edge") for r in recs]
                body = parts[0][1] if len(parts) == 1 else b"[" + b",".join(p[1] for p in parts) + b"]"
                out.append((parts[0][0], body))
    return out


def publish(port: int, msgs: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(200)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(t, b, qos=1) for t, b in msgs]
    for i in infos:
        i.wait_for_publish(300)
    c.disconnect()
    c.loop_stop()


def ingest_cmd(port: int, dsn: str, client_id: str, *extra: str, group: str = "bench") -> list[str]:
    return [sys.executable, "-m", "agent", "ingest", "--broker", f"mqtt://127.0.0.1:{port}", "--db", dsn,
            "--group", group, "--client-id", client_id, *extra]


def throughput(pg: Postgres, broker: MosquittoBroker, n: int, batch: int, procs: int, tag: str) -> float:
    dsn = pg.create_db(f"bench_{tag}")
    ids = [f"bench-{tag}-{i}" for i in range(procs)]
    # register the sessions and their shared subscription, then leave: the broker queues for them
    for cid in ids:
        subprocess.run(ingest_cmd(broker.port, dsn, cid, "--duration", "0.5", group=tag), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = (n // (AGENTS * STREAMS)) * AGENTS * STREAMS
    publish(broker.port, messages(n, batch))
    running = [subprocess.Popen(ingest_cmd(broker.port, dsn, cid, group=tag), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for cid in ids]
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            deadline = time.monotonic() + 600
            while c.execute("SELECT count(*) FROM readings").fetchone()[0] < total:
                if time.monotonic() > deadline:
                    raise RuntimeError("ingest did not finish within 600 s")
                time.sleep(0.2)
            first, last, count, batches = c.execute(
                "SELECT min(received), max(received), count(*), count(DISTINCT received) FROM readings").fetchone()
    finally:
        for p in running:
            p.terminate()
            p.wait(30)
    # max(received) is when the last batch began: add one average batch for its own duration
    span = (last - first).total_seconds() * (1 + 1 / max(batches - 1, 1))
    print(f"{tag}: {count:,} records in {span:.2f} s, {batches} transactions", file=sys.stderr)
    return count / span


def reference_copy(pg: Postgres, n: int, batch: int) -> float:
    dsn = pg.create_db("bench_reference")
    rows = []
    for topic, body in messages(n, batch):
        rows.extend(parse_message(topic, body, "edge")[3])
    with psycopg.connect(dsn) as c:
        c.autocommit = True
        ensure_schema(c)
        c.autocommit = False
        t0 = time.perf_counter()
        with c.cursor() as cur:
            for i in range(0, len(rows), 5000):
                with cur.copy("COPY readings (agent, stream, seq, ts, quality, historical, value, unit, error) "
                              "FROM STDIN") as cp:
                    for r in rows[i:i + 5000]:
                        cp.write_row(r)
                c.commit()
        dt = time.perf_counter() - t0
        print(f"reference: {len(rows):,} rows in {dt:.2f} s", file=sys.stderr)
        return len(rows) / dt


def latency(pg: Postgres, broker: MosquittoBroker, rate: float, seconds: float, batch: int,
            work: Path) -> tuple[float, float, int]:
    from agent.outbox import Outbox
    from agent.uplink import Uplink
    from tests.agent_helpers import small_config
    dsn = pg.create_db("bench_latency")
    log = open(work / "latency-ingest.log", "wb")
    proc = subprocess.Popen(ingest_cmd(broker.port, dsn, "bench-latency"), stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while b"subscribed to" not in (work / "latency-ingest.log").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    cfg = small_config(broker.port, agent_id="lat", commit_interval_ms=20)
    cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, batch=batch, inflight=64))
    outbox = Outbox(work / "state", cfg.outbox)
    outbox.start()
    up = Uplink(cfg, outbox)
    up.start()
    n = int(rate * seconds)
    t0 = time.monotonic()
    for i in range(n):
        d = t0 + i / rate - time.monotonic()
        if d > 0:
            time.sleep(d)
        outbox.put(Emit("reading", f"s{i % 4}", now_ns(), {"value": float(i), "unit": "V"}))
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            deadline = time.monotonic() + 120
            while c.execute("SELECT count(*) FROM readings").fetchone()[0] < n and time.monotonic() < deadline:
                time.sleep(0.2)
            lat = [r[0] for r in c.execute("SELECT extract(epoch FROM received - ts) * 1000 FROM readings")]
    finally:
        up.stop(drain_s=1)
        outbox.stop()
        proc.terminate()
        proc.wait(30)
        log.close()
    lat = sorted(float(x) for x in lat)
    return statistics.median(lat), lat[int(0.99 * (len(lat) - 1))], len(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=50, help="records per MQTT message (the agent's mqtt.batch)")
    ap.add_argument("--rate", type=float, default=2000, help="records/s of the latency run")
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir="."))
    pg = Postgres(fsync=True).start()
    broker = MosquittoBroker(work).start()
    try:
        ref = reference_copy(pg, args.records, args.batch)
        one = throughput(pg, broker, args.records, args.batch, 1, "one")
        two = throughput(pg, broker, args.records, args.batch, 2, "two")
        one_b1 = throughput(pg, broker, args.records // 4, 1, 1, "one_b1")
        med, p99, nlat = latency(pg, broker, args.rate, args.seconds, args.batch, work)
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (load {load[0]:.1f}), Python "
          f"{platform.python_version()}, PostgreSQL {pg.bindir.parent.name} (fsync on), {args.records:,} readings of "
          f"{AGENTS} agents x {STREAMS} streams")
    print()
    print("| measurement | edge-agent ingest | reference | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| one process, records/s (`mqtt.batch = {args.batch}`) | {one:,.0f} | {ref:,.0f} (raw psycopg COPY of "
          f"parsed rows) | {one / ref:.2f} |")
    print(f"| two processes, one shared subscription, records/s | {two:,.0f} | {one:,.0f} (one process) | "
          f"{two / one:.2f}x |")
    print(f"| one process, one record per message, records/s | {one_b1:,.0f} | {one:,.0f} (batch {args.batch}) | "
          f"{one_b1 / one:.2f} |")
    print(f"| latency, put in the outbox -> ingest commit, median / p99 ({args.rate:,.0f} records/s, {nlat:,} "
          f"records, outbox group commit 20 ms) | {med:.0f} ms / {p99:.0f} ms | | |")


if __name__ == "__main__":
    main()
