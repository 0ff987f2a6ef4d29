"""Outbox and uplink benchmark: prints a table, compares against raw sqlite3 in the same run. Not a test.

    .venv/bin/python bench/bench_outbox.py [--records 20000] [--backlog 100000]

Measures: ingest records/s with group commit vs one raw sqlite3 insert+commit per record (both WAL,
synchronous=FULL, same schema); bytes written per record (syscall bytes `wchar` and block-device bytes
`write_bytes` from /proc/self/io); drain rate to a local Mosquitto with QoS 1; time to drain a backlog while live
data flows. Runs on the real disk (a directory under the current one), not tmpfs, so fsync costs are real.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import OutboxConfig  # noqa: E402
from agent.outbox import _SCHEMA, Outbox  # noqa: E402
from agent.records import Emit, payload_json  # noqa: E402
from agent.uplink import Uplink  # noqa: E402
from tests.agent_helpers import small_config, wait  # noqa: E402
from tests.mqtt_helpers import MosquittoBroker, free_port  # noqa: E402


def io_counters() -> tuple[int, int]:
    with open("/proc/self/io") as f:
        d = dict(line.split(": ") for line in f.read().splitlines())
    return int(d["wchar"]), int(d["write_bytes"])


def emit(i: int) -> Emit:
    return Emit("reading", f"s{i % 8}", 1_700_000_000_000_000_000 + i * 1_000_000, {"value": 20.0 + (i % 100) / 10,
                                                                                  "unit": "degC"})


def bench_raw(d: Path, n: int) -> tuple[float, int, int]:
    conn = sqlite3.connect(d / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(_SCHEMA)
    w0, b0 = io_counters()
    t0 = time.perf_counter()
    seq: dict[str, int] = {}
    for i in range(n):
        e = emit(i)
        s = seq.get(e.stream, 0)
        seq[e.stream] = s + 1
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO records(stream, seq, ts_ns, kind, quality, payload) VALUES (?,?,?,?,?,?)",
                     (e.stream, s, e.ts_ns, e.kind, "good", payload_json(e.payload)))
        conn.execute("INSERT INTO streams(stream, kind, next_seq) VALUES (?,?,?) ON CONFLICT(stream) "
                     "DO UPDATE SET next_seq=excluded.next_seq", (e.stream, e.kind, s + 1))
        conn.execute("COMMIT")
    dt = time.perf_counter() - t0
    w1, b1 = io_counters()
    conn.close()
    return n / dt, (w1 - w0) // n, (b1 - b0) // n


def bench_outbox(d: Path, n: int, rate: float | None = None) -> tuple[float, int, int]:
    ob = Outbox(d / "ob", OutboxConfig(), queue_size=n + 10)
    ob.start()
    w0, b0 = io_counters()
    t0 = time.perf_counter()
    for i in range(n):
        ob.put(emit(i))
        if rate:
            target = t0 + (i + 1) / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    ob.flush(600)
    dt = time.perf_counter() - t0
    w1, b1 = io_counters()
    ob.stop()
    return n / dt, (w1 - w0) // n, (b1 - b0) // n


def prefill(state: Path, n: int) -> None:
    ob = Outbox(state, OutboxConfig(commit_max_records=5000), queue_size=n + 10)
    ob.start()
    for i in range(n):
        ob.put(emit(i))
    ob.flush(600)
    ob.stop()


def bench_drain(d: Path, n: int, batch: int = 1) -> float:
    port = free_port()
    broker = MosquittoBroker(d, port).start()
    state = d / f"drain-{batch}"
    prefill(state, n)
    cfg = small_config(port)
    cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, batch=batch))
    ob = Outbox(state, cfg.outbox)
    ob.start()
    up = Uplink(cfg, ob)
    t0 = time.perf_counter()
    up.start()
    wait(lambda: ob.depth == 0, 600, 0.01)
    dt = time.perf_counter() - t0
    up.stop(0)
    ob.stop()
    broker.stop()
    return n / dt


def bench_backlog_with_live(d: Path, n: int) -> tuple[float, int, int]:
    from agent.pipeline import Pipeline

    port = free_port()
    broker = MosquittoBroker(d, port).start()
    state = d / "backlog"
    prefill(state, n)
    agent = Pipeline(small_config(port), state)
    t0 = time.perf_counter()
    agent.start()
    wait(lambda: agent.stats.get("uplink_published_historical") >= n, 900, 0.02)
    dt = time.perf_counter() - t0
    live = agent.stats.get("uplink_published") - agent.stats.get("uplink_published_historical")
    agent.stop()
    broker.stop()
    return dt, live, agent.stats.get("outbox_committed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--raw-records", type=int, default=2000, help="the raw per-record commit is slow: fewer")
    ap.add_argument("--backlog", type=int, default=100000)
    args = ap.parse_args()
    from agent.signal.cache import configure_cache
    configure_cache()
    from agent.signal.warmup import warmup
    warmup()  # as the service's start-up step does: no compile on the publish path during the measurements
    d = Path(tempfile.mkdtemp(prefix="bench-outbox-", dir=os.getcwd()))
    try:
        raw = bench_raw(d, args.raw_records)
        grp = bench_outbox(d, args.records)
        paced = bench_outbox(d, 2000, rate=1000.0)
        drain = bench_drain(d, args.records)
        drain_batched = bench_drain(d, args.records, batch=50)
        backlog_s, live, _ = bench_backlog_with_live(d, args.backlog)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}; disk under {os.getcwd()}")
    print()
    print("| measurement | edge-agent | reference | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| ingest, records/s (WAL, synchronous=FULL) | {grp[0]:,.0f} (group commit, 200 ms) | "
          f"{raw[0]:,.0f} (raw sqlite3, commit per record) | {grp[0] / raw[0]:.1f}x |")
    print(f"| bytes written per record, syscalls (wchar) | {grp[1]:,} | {raw[1]:,} | "
          f"{raw[1] / max(grp[1], 1):.1f}x fewer |")
    print(f"| bytes written per record, to the device (write_bytes) | {grp[2]:,} | {raw[2]:,} | "
          f"{(raw[2] / grp[2]) if grp[2] else float('nan'):.1f}x fewer |")
    print(f"| bytes written per record at a live 1000 records/s (wchar / write_bytes) | {paced[1]:,} / {paced[2]:,} "
          f"| | |")
    print(f"| drain to local Mosquitto, QoS 1, records/s (inflight 64) | {drain:,.0f} | | |")
    print(f"| the same with `mqtt.batch = 50` (records of a stream per message) | {drain_batched:,.0f} | | "
          f"{drain_batched / drain:.1f}x |")
    print(f"| drain a {args.backlog:,}-record backlog while live data flows | {backlog_s:.1f} s | | "
          f"{live} live records published meanwhile |")


if __name__ == "__main__":
    main()
