"""Outbox ingest against a plain `executemany` loop doing the same work: prints a table; not a test.

    .venv/bin/python bench/bench_outbox_ingest.py [--records 20000] [--repeats 5]

Both sides store the same rows in the same schema (`agent.outbox._SCHEMA`), WAL, synchronous=FULL, on the real
disk under the current directory, one commit per 500 records:

* reference: one thread, a loop that gives each record its per-stream seq, builds its JSON with
  `agent.records.payload_json`, and every 500 records runs `executemany` for the rows and the stream counters in
  one transaction;
* outbox: `Outbox.put()` per record from the caller's thread (and `Outbox.put_many()` in batches of 10, if the
  outbox has it), then `flush()`: the writer thread's group commit (commit_max_records=500).

The two alternate (A B A B ...) `--repeats` times; the table gives min and median of records/s (wall clock, from
the first put to the last commit) and of CPU seconds per 10k records (the whole process), and the outbox's median
as a fraction of the reference's median. A shared, busy machine moves the absolute numbers; the ratio within one
run is the figure to quote.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import OutboxConfig  # noqa: E402
from agent.outbox import _SCHEMA, Outbox  # noqa: E402
from agent.records import Emit, _clean, payload_json  # noqa: E402

COMMIT_EVERY = 500


def emits(n: int) -> list[Emit]:
    """Readings of 8 streams, the size of a typical slow value record."""
    return [Emit("reading", f"s{i % 8}", 1_700_000_000_000_000_000 + i * 1_000_000,
                 {"value": 20.0 + (i % 100) / 10, "unit": "degC"}) for i in range(n)]


def reference(d: Path, records: list[Emit]) -> tuple[float, float]:
    """(wall s, CPU s) of the plain loop."""
    conn = sqlite3.connect(d / "ref.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(_SCHEMA)
    seq: dict[str, int] = {}
    c0, t0 = time.process_time(), time.perf_counter()
    rows = []
    for i, e in enumerate(records, 1):
        s = seq.get(e.stream, 0)
        seq[e.stream] = s + 1
        rows.append((e.stream, s, e.ts_ns, e.kind, str(e.quality), payload_json(e.payload)))
        if i % COMMIT_EVERY == 0 or i == len(records):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO records(stream, seq, ts_ns, kind, quality, payload) VALUES (?,?,?,?,?,?)",
                             rows)
            conn.executemany("INSERT INTO streams(stream, kind, next_seq) VALUES (?,?,?) ON CONFLICT(stream) "
                             "DO UPDATE SET next_seq=excluded.next_seq",
                             [(st, "reading", n) for st, n in seq.items()])
            conn.execute("COMMIT")
            rows = []
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == len(records)
    conn.close()
    return wall, cpu


def outbox(d: Path, records: list[Emit], batch: int = 0) -> tuple[float, float]:
    """(wall s, CPU s) of the outbox: put (or put_many in batches of `batch`), then flush."""
    ob = Outbox(d / "ob", OutboxConfig(commit_max_records=COMMIT_EVERY), queue_size=len(records) + 10)
    ob.start()
    c0, t0 = time.process_time(), time.perf_counter()
    if batch:
        put_many = ob.put_many
        for i in range(0, len(records), batch):
            put_many(records[i:i + batch])
    else:
        for e in records:
            ob.put(e)
    if not ob.flush(600):
        raise RuntimeError("the outbox did not commit within 600 s")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    depth = ob.depth
    ob.stop()
    if depth != len(records):
        raise RuntimeError(f"expected {len(records)} records in the outbox, found {depth}")
    return wall, cpu


def encode_us(turns: int = 7) -> list[tuple[str, float, float]]:
    """CPU µs per payload: `payload_json` (one cached encoder) vs `json.dumps(_clean(p), ...)` as it was before
    (a new encoder and a recursive copy per record), interleaved, medians."""
    import json

    reading = {"value": 20.5, "unit": "degC"}
    features = {"unit": "m/s2", "rate_hz": 1600.0, "n": 1600, "bands_hz": [[10.0, 100.0], [100.0, 400.0]],
                "features": {a: {"rms": 1.23456, "peak": 3.2, "kurtosis": 3.1, "crest": 2.5, "velocity_rms": 1.1,
                                 "zone": "A", "bands": [0.1, 0.2], "peaks": [[24.75, 0.3], [49.5, 0.1]]}
                             for a in "xyz"}}
    rows = []
    for name, p in (("reading (2 fields)", reading), ("features (3 axes)", features)):
        before = lambda p=p: json.dumps(_clean(p), separators=(",", ":"), allow_nan=False)  # noqa: E731
        now = lambda p=p: payload_json(p)  # noqa: E731
        assert before() == now()
        t: dict[str, list[float]] = {"before": [], "now": []}
        reps = 2000
        for _ in range(turns):
            for k, fn in (("before", before), ("now", now)):
                c = time.process_time()
                for _ in range(reps):
                    fn()
                t[k].append((time.process_time() - c) / reps * 1e6)
        rows.append((name, statistics.median(t["before"]), statistics.median(t["now"])))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n = args.records
    records = emits(n)
    sides: dict[str, tuple[str, object]] = {
        "executemany loop (reference)": ("ref", lambda d: reference(d, records)),
        "Outbox.put per record": ("put", lambda d: outbox(d, records)),
    }
    if hasattr(Outbox, "put_many"):
        sides["Outbox.put_many, batches of 10"] = ("many", lambda d: outbox(d, records, batch=10))
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, SQLite "
          f"{sqlite3.sqlite_version}; load average {os.getloadavg()[0]:.1f} at start; disk under {os.getcwd()}")
    root = Path(tempfile.mkdtemp(prefix="bench-outbox-ingest-", dir=os.getcwd()))
    try:
        for r in range(args.repeats):
            for name, (tag, run) in sides.items():  # interleaved: A B (C) A B (C) ...
                d = root / f"{tag}-{r}"
                d.mkdir()
                results[name].append(run(d))  # type: ignore[operator]
                shutil.rmtree(d, ignore_errors=True)
            print(f"  round {r + 1}: " + ", ".join(f"{k.split(' (')[0]} {n / v[-1][0]:,.0f}/s"
                                                  for k, v in results.items()), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ref_med = statistics.median(n / w for w, _ in results["executemany loop (reference)"])
    ref_cpu = statistics.median(c for _, c in results["executemany loop (reference)"])
    print(f"\ningest of {n:,} records, {args.repeats} interleaved repeats (WAL, synchronous=FULL, commit per "
          f"{COMMIT_EVERY})")
    print("| path | records/s min | records/s median | CPU s per 10k, median | median vs reference (rate / CPU) |")
    print("|---|---:|---:|---:|---:|")
    for name, vals in results.items():
        rates = [n / w for w, _ in vals]
        cpu = statistics.median(c for _, c in vals)
        print(f"| {name} | {min(rates):,.0f} | {statistics.median(rates):,.0f} | {cpu * 1e4 / n:.3f} | "
              f"{statistics.median(rates) / ref_med:.2f}x / {cpu / ref_cpu:.2f}x |")
    print("\nJSON of one payload, CPU µs (median of 7 interleaved turns):")
    print("| payload | json.dumps(_clean(p)) (before) | payload_json (cached encoder) | ratio |")
    print("|---|---:|---:|---:|")
    for name, before, now in encode_us():
        print(f"| {name} | {before:.1f} | {now:.1f} | {before / now:.1f}x |")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
