"""The outbox on a real SQLite file: group commit, persisted sequences, acks, bounds and their gap events."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.config import OutboxConfig
from agent.errors import OutboxError
from agent.outbox import GAP_STREAM, Outbox, seq_ranges
from agent.records import Emit
from hal.types import Quality


def emit(stream: str, i: int, kind: str = "reading", size: int = 10) -> Emit:
    return Emit(kind, stream, 1_700_000_000_000_000_000 + i, {"value": i, "pad": "x" * size}, Quality.GOOD)


def all_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as c:
        return c.execute("SELECT stream, seq, kind, payload FROM records ORDER BY id").fetchall()


def test_group_commit_assigns_per_stream_seq_and_persists_it(tmp_path: Path) -> None:
    ob = Outbox(tmp_path, OutboxConfig(commit_interval_ms=20))
    ob.start()
    for i in range(10):
        assert ob.put(emit("a", i))
        assert ob.put(emit("b", i))
    assert ob.flush(10)
    ob.stop()
    with sqlite3.connect(tmp_path / "outbox.db") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = all_rows(tmp_path / "outbox.db")
    assert [r[1] for r in rows if r[0] == "a"] == list(range(10))
    assert [r[1] for r in rows if r[0] == "b"] == list(range(10))
    ob2 = Outbox(tmp_path, OutboxConfig(commit_interval_ms=20))
    ob2.start()
    ob2.put(emit("a", 99))
    ob2.flush(10)
    ob2.stop()
    assert [r[1] for r in all_rows(tmp_path / "outbox.db") if r[0] == "a"][-1] == 10


def test_acked_records_are_deleted_and_ids_never_reused(tmp_path: Path) -> None:
    ob = Outbox(tmp_path, OutboxConfig(commit_interval_ms=10))
    ob.start()
    for i in range(5):
        ob.put(emit("a", i))
    ob.flush()
    reader = ob.reader()
    recs = reader.fetch(0, 100)
    assert [r.seq for r in recs] == [0, 1, 2, 3, 4]
    ob.ack([r.id for r in recs])
    ob.put(emit("a", 5))
    ob.flush()
    import time
    deadline = time.monotonic() + 5
    while ob.depth != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ob.depth == 1
    (new,) = reader.fetch(0, 100)
    assert new.id > recs[-1].id and new.seq == 5  # AUTOINCREMENT: the uplink's cursor stays valid
    reader.close()
    ob.stop()


def test_a_stream_carries_one_kind(tmp_path: Path) -> None:
    ob = Outbox(tmp_path, OutboxConfig(commit_interval_ms=10))
    ob.start()
    ob.put(emit("a", 0, "reading"))
    ob.put(emit("a", 1, "event"))
    ob.flush()
    ob.stop()
    assert [(r[0], r[2]) for r in all_rows(tmp_path / "outbox.db")] == [("a", "reading")]
    assert ob.stats.get("outbox_kind_mismatch") == 1


def test_unopenable_outbox_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutboxError, match=str(blocker)):
        Outbox(blocker / "sub", OutboxConfig()).open()


def _gap_events(path: Path) -> list[dict]:
    import json
    return [json.loads(r[3]) for r in all_rows(path) if r[0] == GAP_STREAM]


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_full_outbox_gap_events_account_for_exactly_the_missing_seqs(tmp_path: Path, policy: str) -> None:
    ob = Outbox(tmp_path, OutboxConfig(commit_interval_ms=5, commit_max_records=50, max_mb=0.25, policy=policy))
    ob.start()
    n = 3000
    for i in range(n):
        ob.put(emit("a", i, size=300))
        if i % 50 == 0:
            ob.flush()
    ob.flush()
    ob._last_size_check = 0  # run the bound check now rather than within the second
    ob.put(emit("a", n, size=300))
    ob.flush()
    import time
    time.sleep(0.2)
    ob.stop()
    path = tmp_path / "outbox.db"
    kept = [r[1] for r in all_rows(path) if r[0] == "a"]
    gaps = _gap_events(path)
    assert gaps, "a full outbox must publish gap events"
    missing: set[int] = set()
    for g in gaps:
        assert g["event"] == "gap" and g["gap_stream"] == "a" and g["reason"] == "outbox_full"
        covered = {s for lo, hi in g["ranges"] for s in range(lo, hi + 1)}
        assert len(covered) == g["count"]
        assert not covered & missing
        missing |= covered
    assert sorted(set(kept) | missing) == list(range(n + 1)), "every seq is either kept or named in a gap event"
    assert not set(kept) & missing
    if policy == "drop_oldest":
        assert min(kept) > 0 and max(kept) == n
    else:
        assert min(kept) == 0 and n in missing
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def testseq_ranges() -> None:
    assert seq_ranges([5, 1, 2, 3, 7]) == [[1, 3], [5, 5], [7, 7]]
    assert seq_ranges([]) == []


def test_records_older_than_max_age_are_dropped_with_gap_events(tmp_path: Path) -> None:
    import time as _time

    from hal.types import now_ns
    ob = Outbox(tmp_path, OutboxConfig(commit_interval_ms=5, max_age_h=1.0))
    ob.start()
    old = now_ns() - int(2 * 3600e9)
    for i in range(5):
        ob.put(Emit("reading", "a", old + i, {"value": i}))  # two hours old: expired
    for i in range(5, 8):
        ob.put(Emit("reading", "a", now_ns(), {"value": i}))
    ob.flush()
    ob._last_size_check = 0
    ob.put(Emit("reading", "b", now_ns(), {"value": 0}))
    ob.flush()
    _time.sleep(0.2)
    ob.stop()
    rows = all_rows(tmp_path / "outbox.db")
    assert [r[1] for r in rows if r[0] == "a"] == [5, 6, 7]
    (gap,) = _gap_events(tmp_path / "outbox.db")
    assert gap["reason"] == "expired" and gap["ranges"] == [[0, 4]] and gap["count"] == 5
    assert ob.stats.get("outbox_dropped_expired") == 5


def test_an_existing_outbox_is_converted_to_incremental_vacuum_keeping_its_records(tmp_path: Path) -> None:
    """An outbox made before incremental vacuum (auto_vacuum NONE) is converted at start when there is room."""
    from agent.outbox import _SCHEMA
    with sqlite3.connect(tmp_path / "outbox.db") as c:
        c.execute("PRAGMA journal_mode=WAL")
        c.executescript(_SCHEMA)
        c.executemany("INSERT INTO records(stream, seq, ts_ns, kind, quality, payload) VALUES (?, ?, ?, ?, ?, ?)",
                      [("a", i, i, "reading", "good", '{"value": %d}' % i) for i in range(50)])
        c.execute("INSERT INTO streams VALUES ('a', 'reading', 50)")
        assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    ob = Outbox(tmp_path, OutboxConfig(commit_interval_ms=5))
    ob.start()
    ob.put(emit("a", 50))
    assert ob.flush(10)
    ob.stop()
    with sqlite3.connect(tmp_path / "outbox.db") as c:
        assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [r[1] for r in all_rows(tmp_path / "outbox.db")] == list(range(51))


def test_a_record_that_can_never_be_committed_is_counted_as_not_committed(tmp_path: Path) -> None:
    """A payload JSON cannot carry (a set) is refused alone, the rest of its batch is committed, and the loss is a
    `not_committed` gap event."""
    import json
    ob = Outbox(tmp_path, OutboxConfig(commit_interval_ms=5))
    ob.start()
    ob.put(emit("a", 0))
    ob.put(Emit("reading", "a", 1_700_000_000_000_000_001, {"value": {1, 2}}))
    ob.put(emit("a", 2))
    assert ob.flush(10)
    ob.stop()
    rows = all_rows(tmp_path / "outbox.db")
    assert [r[1] for r in rows if r[0] == "a"] == [0, 1]
    (gap,) = [json.loads(r[3]) for r in rows if r[0] == GAP_STREAM]
    assert (gap["reason"], gap["gap_stream"], gap["count"], gap["ranges"]) == ("not_committed", "a", 1, [])
    assert gap["first_ts"] == gap["last_ts"] == "2023-11-14T22:13:20.000Z"
    assert ob.lost_total == 1
