"""`Outbox.put_many` and the writer's hand-off on a real SQLite file: order and per-stream seqs as `put` gives them,
exact per-record accounting of what a full queue refuses, and a flush or a stop that does not wait for the group
commit window."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

from agent.config import OutboxConfig
from agent.outbox import GAP_STREAM, Outbox
from agent.records import Emit, iso_ts
from tests.agent_helpers import wait

BASE_TS = 1_700_000_000_000_000_000


def emit(stream: str, i: int) -> Emit:
    return Emit("reading", stream, BASE_TS + i * 1_000_000, {"value": i})


def rows(state: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(state / "outbox.db") as c:
        return c.execute("SELECT stream, seq, payload FROM records ORDER BY id").fetchall()


def test_put_many_keeps_order_and_per_stream_seqs_mixed_with_put(tmp_path: Path) -> None:
    ob = Outbox(tmp_path, OutboxConfig(commit_interval_ms=20, commit_max_records=7))
    seen: list[Emit] = []
    ob.add_observer(seen.append)
    ob.start()
    offered: list[Emit] = []
    i = 0
    for turn in range(30):
        batch = [emit("abc"[(i + k) % 3], i + k) for k in range(turn % 5)]  # 0..4 records, streams interleaved
        i += len(batch)
        assert ob.put_many(batch) == len(batch)
        offered += batch
        single = emit("d", i)
        i += 1
        assert ob.put(single)
        offered.append(single)
    assert ob.put_many([]) == 0
    assert ob.flush(30)
    ob.stop()
    got = rows(tmp_path)
    assert [(s, json.loads(p)["value"]) for s, _, p in got] == [(e.stream, e.payload["value"]) for e in offered]
    for s in "abcd":
        assert [seq for st, seq, _ in got if st == s] == list(range(sum(e.stream == s for e in offered)))
    assert seen == offered, "observers see every accepted record once, in order"
    assert ob.lost_total == 0 and ob.stats.get("outbox_dropped_queue_full") == 0


def test_put_many_on_a_full_queue_refuses_the_newest_and_counts_each_per_stream(tmp_path: Path) -> None:
    """The writer is stalled on a lock another connection holds; batches of 7 over 3 streams fill a queue of 50.
    The batch that does not fit is cut: its first records are accepted, the rest refused; every refused record is
    counted per stream and published as a `not_committed` gap event with its time range."""
    state = tmp_path / "state"
    ob = Outbox(state, OutboxConfig(commit_interval_ms=5, commit_max_records=10), queue_size=50)
    seen: list[Emit] = []
    ob.add_observer(seen.append)
    ob.start()
    blocker = sqlite3.connect(state / "outbox.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer's next commit waits on this lock (busy timeout 30 s)
    first = emit("a", 0)
    accepted: list[Emit] = [first]
    refused: list[Emit] = []
    returns: list[int] = []
    try:
        assert ob.put(first)
        # the writer took `first` and is now waiting on the lock in its commit: the queue is empty and nobody
        # takes from it until the lock is released
        assert wait(lambda: ob.queue_depth() == 0, 30)
        i = 1
        for _ in range(12):
            batch = [emit("abc"[(i + k) % 3], i + k) for k in range(7)]
            i += 7
            n = ob.put_many(batch)
            returns.append(n)
            accepted += batch[:n]
            refused += batch[n:]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert returns == [7] * 7 + [1] + [0] * 4, "the queue holds 50: seven whole batches, then one record of the 8th"
    assert ob.flush(30)
    ob.stop()
    got = rows(state)
    data = [(s, seq, json.loads(p)) for s, seq, p in got if s != GAP_STREAM]
    assert [(s, p["value"]) for s, _, p in data] == [(e.stream, e.payload["value"]) for e in accepted]
    for s in "abc":
        assert [seq for st, seq, _ in data if st == s] == list(range(sum(e.stream == s for e in accepted)))
    gaps = [json.loads(p) for s, _, p in got if s == GAP_STREAM]
    by_stream = {g["gap_stream"]: g for g in gaps}
    assert len(by_stream) == len(gaps) and all(g["reason"] == "not_committed" for g in gaps)
    want = Counter(e.stream for e in refused)
    assert {s: g["count"] for s, g in by_stream.items()} == dict(want)
    for s, g in by_stream.items():
        ts = [e.ts_ns for e in refused if e.stream == s]
        assert (g["first_ts"], g["last_ts"]) == (iso_ts(min(ts)), iso_ts(max(ts)))
    assert ob.stats.get("outbox_dropped_queue_full") == len(refused) == ob.lost_total == 12 * 7 - 50
    assert seen == accepted


def test_flush_and_stop_do_not_wait_for_the_group_commit_window(tmp_path: Path) -> None:
    """A one-minute commit window: a flush commits what is waiting now, and a stop commits what is left, instead
    of waiting out the window."""
    ob = Outbox(tmp_path, OutboxConfig(commit_interval_ms=60000))
    ob.start()
    assert ob.put_many([emit("a", i) for i in range(3)]) == 3
    assert ob.flush(20), "flush waited for the commit window"
    assert [seq for _, seq, _ in rows(tmp_path)] == [0, 1, 2]
    assert ob.put_many([emit("a", i) for i in range(3, 5)]) == 2
    ob.stop(timeout=20)
    assert [seq for _, seq, _ in rows(tmp_path)] == [0, 1, 2, 3, 4]
    assert ob.lost_total == 0
