"""The store: a durable SQLite outbox (WAL) — the only writer of the outbox database.

Every record is committed here before anything is sent. One writer thread owns the write connection: it takes
`Emit`s from a bounded queue, gives each a per-stream `seq` (persisted in the same transaction, so a restart
continues every sequence and never repeats one), and commits them in group commits (every `commit_interval_ms`
or `commit_max_records`) so an SD card is not written per sample. Acknowledged records (PUBACK received by the
uplink) are deleted by the same thread.

Faults are survived, not raised: a full disk, a read-only file system or an I/O error rolls the transaction back,
keeps the batch in memory, is counted and reported once, and the write is retried with back-off until it succeeds.
When the database grows past `max_mb`, the configured policy drops the oldest records (`drop_oldest`) or refuses
the newest (`drop_newest`); with `max_age_h`, records older than that are dropped too (reason `expired`). Every
dropped range is published as a `gap` event on stream `outbox`.

Readers open their own connections: the uplink with `Outbox.reader()`, diagnostics and the status document with
`OutboxView` (at the end of this module: every read query on the outbox tables lives here).
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.config import OutboxConfig
from agent.errors import OutboxError
from agent.records import Emit, Record, payload_json
from agent.stats import Stats
from hal.types import Quality, now_ns

log = logging.getLogger("edge_agent.outbox")

DB_NAME = "outbox.db"
GAP_STREAM = "outbox"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused, the uplink's cursor relies on it
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    quality TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    next_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class OutboxInfo:
    depth: int
    oldest_ts_ns: int | None
    newest_ts_ns: int | None
    streams: dict[str, int]  # stream -> next seq
    file_bytes: int
    used_bytes: int


def _connect(path: Path, synchronous: str = "full", timeout_s: float = 30.0) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    return conn


def _is_fault(e: sqlite3.Error) -> bool:
    """Errors of the disk or file system (survivable) as opposed to programming errors."""
    msg = str(e).lower()
    return isinstance(e, sqlite3.OperationalError) or any(
        s in msg for s in ("disk", "full", "readonly", "read-only", "i/o", "locked", "malformed"))


def seq_ranges(seqs: list[int]) -> list[list[int]]:
    """[[first, last], ...] inclusive runs of consecutive sequence numbers."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


class OutboxReader:
    """A read connection for one thread (WAL lets it read while the writer commits)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0, isolation_level=None,
                                    check_same_thread=False)

    def fetch(self, after_id: int, limit: int) -> list[Record]:
        rows = self.conn.execute(
            "SELECT id, stream, seq, ts_ns, kind, quality, payload FROM records WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit)).fetchall()
        return [Record(r[0], r[1], r[2], r[3], r[4], Quality(r[5]), json.loads(r[6])) for r in rows]

    def fetch_tail(self, after_id: int, limit: int) -> list[Record]:
        """The newest records above `after_id`, oldest first (used to keep live data flowing during a backlog)."""
        rows = self.conn.execute(
            "SELECT id, stream, seq, ts_ns, kind, quality, payload FROM records WHERE id > ? "
            "ORDER BY id DESC LIMIT ?", (after_id, limit)).fetchall()
        rows.reverse()
        return [Record(r[0], r[1], r[2], r[3], r[4], Quality(r[5]), json.loads(r[6])) for r in rows]

    def depth(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def max_id(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()[0])

    def info(self) -> OutboxInfo:
        c = self.conn
        depth, oldest, newest = c.execute("SELECT COUNT(*), MIN(ts_ns), MAX(ts_ns) FROM records").fetchone()
        streams = dict(c.execute("SELECT stream, next_seq FROM streams ORDER BY stream").fetchall())
        page_size = c.execute("PRAGMA page_size").fetchone()[0]
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        return OutboxInfo(int(depth), oldest, newest, streams, page_size * pages, page_size * (pages - free))

    def close(self) -> None:
        self.conn.close()


class Outbox:
    def __init__(self, state_dir: Path, config: OutboxConfig, stats: Stats | None = None,
                 queue_size: int = 20000) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME
        self.config = config
        self.stats = stats or Stats()
        self._queue: queue.Queue[Emit] = queue.Queue(maxsize=queue_size)
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._next_seq: dict[str, int] = {}
        self._kinds: dict[str, str] = {}
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._accepted = 0  # emits accepted into the queue
        self._settled = 0  # emits committed (or dropped by policy)
        self._fault: str | None = None
        self._depth = 0
        self._max_bytes = int(config.max_mb * 1024 * 1024)
        self._last_size_check = 0.0
        self._listeners: list[threading.Event] = []
        self._observers: list[Any] = []  # called with every accepted Emit (status, tail), on the producer's thread

    # -- life cycle -------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Create or open the database (raises OutboxError naming the path if that is impossible)."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path, self.config.synchronous)
            db = sqlite_utils.Database(conn)
            db.enable_wal()
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_ns', ?)", (str(now_ns()),))
            for stream, kind, next_seq in conn.execute("SELECT stream, kind, next_seq FROM streams"):
                self._next_seq[stream] = next_seq
                self._kinds[stream] = kind
            self._depth = int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])
        except (OSError, sqlite3.Error) as e:
            raise OutboxError(f"cannot open the outbox {self.path}: {e}") from e
        self._conn = conn
        self.stats.set("outbox_depth", self._depth)

    def start(self) -> None:
        if self._conn is None:
            self.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit everything accepted so far, then close."""
        self.flush(timeout)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass
            self._conn.close()
            self._conn = None

    # -- producer side ----------------------------------------------------------------------------------------

    def put(self, emit: Emit) -> bool:
        """Queue a record for the next group commit. Never blocks; a full queue drops and counts it."""
        try:
            self._queue.put_nowait(emit)
        except queue.Full:
            self.stats.inc("outbox_dropped_queue_full")
            return False
        with self._cond:
            self._accepted += 1
        for observe in self._observers:
            try:
                observe(emit)
            except Exception:  # an observer's bug must not lose the record
                log.exception("outbox observer failed")
        return True

    def add_observer(self, fn: Any) -> None:
        """Call `fn(emit)` for every record accepted from now on (cheap: it runs on the producer's thread)."""
        self._observers.append(fn)

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def ack(self, record_ids: list[int]) -> None:
        """The uplink received PUBACKs for these records: delete them in the next commit."""
        for rid in record_ids:
            self._acks.put(rid)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record accepted so far is committed. False on timeout (e.g. disk full)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._accepted
            while self._settled < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def subscribe(self) -> threading.Event:
        """An event set after every commit that added records (the uplink waits on it)."""
        ev = threading.Event()
        self._listeners.append(ev)
        return ev

    def reader(self) -> OutboxReader:
        return OutboxReader(self.path)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def fault(self) -> str | None:
        return self._fault

    def next_seq(self, stream: str) -> int:
        return self._next_seq.get(stream, 0)

    # -- writer thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.config.commit_interval_ms / 1000.0
        pending: list[Emit] = []
        acks: list[int] = []
        backoff = 0.2
        while True:
            self.stats.progress("outbox")
            stopping = self._stop.is_set()
            deadline = time.monotonic() + (0 if stopping else interval)
            while len(pending) < self.config.commit_max_records:
                left = deadline - time.monotonic()
                try:
                    pending.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            while True:
                try:
                    acks.append(self._acks.get_nowait())
                except queue.Empty:
                    break
            if not pending and not acks:
                if stopping:
                    return
                continue
            try:
                self._commit(pending, acks)
            except sqlite3.Error as e:
                self._on_fault(e)
                if stopping and self._queue.empty():
                    # still failing at shutdown: what is not committed is counted as lost, never half-written
                    self.stats.inc("outbox_lost_at_shutdown", len(pending))
                    self._settle(len(pending))
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            if self._fault is not None:
                log.warning("outbox writable again (%s): %d records committed", self.path, len(pending))
                self._fault = None
                self.stats.set("outbox_fault", "")
            n = len(pending)
            pending, acks = [], []
            self._settle(n)
            if n:
                for ev in self._listeners:
                    ev.set()
            if time.monotonic() - self._last_size_check > 1.0:
                self._last_size_check = time.monotonic()
                try:
                    self._enforce_bounds()
                except sqlite3.Error as e:
                    self._on_fault(e)

    def _settle(self, n: int) -> None:
        with self._cond:
            self._settled += n
            self._cond.notify_all()

    def _on_fault(self, e: sqlite3.Error) -> None:
        self.stats.inc("outbox_write_errors")
        msg = str(e)
        if self._fault != msg:
            hint = " (disk full?)" if "full" in msg.lower() else (
                " (read-only file system?)" if "readonly" in msg.lower() or "read-only" in msg.lower() else "")
            log.error("outbox write failed%s: %s — keeping records in memory and retrying (%s)", hint, msg, self.path)
        self._fault = msg
        self.stats.set("outbox_fault", msg)
        if self._conn is not None and self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _commit(self, pending: list[Emit], acks: list[int], refuse: bool = False) -> None:
        assert self._conn is not None
        conn = self._conn
        next_seq = dict(self._next_seq)
        kinds = dict(self._kinds)
        rows = []
        touched: set[str] = set()
        for e in pending:
            known = kinds.get(e.stream)
            if known is not None and known != e.kind:
                self.stats.inc("outbox_kind_mismatch")
                log.error("stream %s carries %s records, refusing a %s record", e.stream, known, e.kind)
                continue
            kinds[e.stream] = e.kind
            seq = next_seq.get(e.stream, 0)
            next_seq[e.stream] = seq + 1
            touched.add(e.stream)
            rows.append((e.stream, seq, e.ts_ns, e.kind, str(e.quality), payload_json(e.payload)))
        full = not refuse and self.config_policy() == "drop_newest" and self._over_bound()
        conn.execute("BEGIN IMMEDIATE")
        if full and rows:
            dropped: dict[str, list[int]] = defaultdict(list)
            for r in rows:
                dropped[r[0]].append(r[1])
            rows = []
            gap_rows = self._gap_rows(dropped, "outbox_full", next_seq, kinds, touched)
            rows.extend(gap_rows)
            self.stats.inc("outbox_dropped_newest", sum(len(v) for v in dropped.values()))
        if rows:
            conn.executemany(
                "INSERT INTO records(stream, seq, ts_ns, kind, quality, payload) VALUES (?, ?, ?, ?, ?, ?)", rows)
        if touched:
            conn.executemany(
                "INSERT INTO streams(stream, kind, next_seq) VALUES (?, ?, ?) "
                "ON CONFLICT(stream) DO UPDATE SET next_seq = excluded.next_seq",
                [(s, kinds[s], next_seq[s]) for s in touched])
        deleted = 0
        if acks:
            for i in range(0, len(acks), 500):
                chunk = acks[i:i + 500]
                cur = conn.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                deleted += cur.rowcount
        conn.execute("COMMIT")
        self._next_seq = next_seq
        self._kinds = kinds
        self._depth += len(rows) - deleted
        self.stats.inc("outbox_committed", len(rows))
        self.stats.inc("outbox_acked", deleted)
        self.stats.set("outbox_depth", self._depth)

    def config_policy(self) -> str:
        return self.config.policy

    def _used_bytes(self) -> int:
        assert self._conn is not None
        c = self._conn
        page_size = c.execute("PRAGMA page_size").fetchone()[0]
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        return page_size * (pages - free)

    def _over_bound(self) -> bool:
        return self._used_bytes() > self._max_bytes

    def _gap_rows(self, dropped: dict[str, list[int]], reason: str, next_seq: dict[str, int],
                  kinds: dict[str, str], touched: set[str]) -> list[tuple[Any, ...]]:
        """Gap events (stream `outbox`, kind `event`) naming exactly which seqs of which streams were dropped."""
        rows = []
        ts = now_ns()
        for stream, seqs in sorted(dropped.items()):
            seq = next_seq.get(GAP_STREAM, 0)
            next_seq[GAP_STREAM] = seq + 1
            kinds[GAP_STREAM] = "event"
            touched.add(GAP_STREAM)
            payload = {"event": "gap", "reason": reason, "gap_stream": stream, "ranges": seq_ranges(seqs),
                       "count": len(seqs)}
            rows.append((GAP_STREAM, seq, ts, "event", str(Quality.GOOD), payload_json(payload)))
            self.stats.inc("outbox_gap_events")
        return rows

    def purge(self, streams: list[str] | None = None, before_ns: int | None = None) -> dict[str, list[int]]:
        """Delete unsent records (all, of some streams, and/or older than a time) for `edge-agent buffer purge`,
        with gap events (reason `purged`) naming every deleted range. Only on an opened outbox whose writer is not
        running (the service stopped). Returns {stream: [deleted seqs]}."""
        if self._conn is None or self._thread is not None:
            raise OutboxError(f"purge needs the outbox {self.path} opened and not running")
        where, params = "1", []
        if streams:
            where += f" AND stream IN ({','.join('?' * len(streams))})"
            params += list(streams)
        if before_ns is not None:
            where += " AND ts_ns < ?"
            params.append(before_ns)
        try:
            dropped = self._drop(where, tuple(params), "purged")
            if dropped:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.execute("VACUUM")  # give the space back to the SD card
        except sqlite3.Error as e:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise OutboxError(f"cannot purge {self.path}: {e}") from e
        return dropped

    def _drop(self, where: str, params: tuple[Any, ...], reason: str) -> dict[str, list[int]]:
        """Delete the records matching `where` (never gap events) in one transaction, with their gap events.
        Returns {stream: [dropped seqs]}."""
        assert self._conn is not None
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(f"SELECT id, stream, seq FROM records WHERE stream != ? AND {where}",
                            (GAP_STREAM, *params)).fetchall()
        if not rows:
            conn.execute("ROLLBACK")
            return {}
        dropped: dict[str, list[int]] = defaultdict(list)
        for _, stream, seq in rows:
            dropped[stream].append(seq)
        ids = [r[0] for r in rows]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            conn.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        next_seq, kinds = dict(self._next_seq), dict(self._kinds)
        touched: set[str] = set()
        gap_rows = self._gap_rows(dropped, reason, next_seq, kinds, touched)
        conn.executemany(
            "INSERT INTO records(stream, seq, ts_ns, kind, quality, payload) VALUES (?, ?, ?, ?, ?, ?)", gap_rows)
        conn.executemany(
            "INSERT INTO streams(stream, kind, next_seq) VALUES (?, ?, ?) "
            "ON CONFLICT(stream) DO UPDATE SET next_seq = excluded.next_seq",
            [(s, kinds[s], next_seq[s]) for s in touched])
        conn.execute("COMMIT")
        self._next_seq, self._kinds = next_seq, kinds
        self._depth += len(gap_rows) - len(ids)
        self.stats.set("outbox_depth", self._depth)
        for ev in self._listeners:
            ev.set()
        return dict(dropped)

    def _enforce_bounds(self) -> None:
        """Age bound (`max_age_h`), then drop_oldest: while over the size bound, delete the oldest records; every
        dropped range is published as a gap event."""
        if self.config.max_age_h > 0:
            cutoff = now_ns() - int(self.config.max_age_h * 3600e9)
            n = sum(map(len, self._drop("ts_ns < ?", (cutoff,), "expired").values()))
            if n:
                self.stats.inc("outbox_dropped_expired", n)
                log.warning("outbox: dropped %d records older than %g h (published as gap events)", n,
                            self.config.max_age_h)
        if self.config_policy() != "drop_oldest" or not self._over_bound():
            return
        assert self._conn is not None
        for _ in range(100):
            if not self._over_bound():
                break
            chunk = max(100, self._depth // 20)
            row = self._conn.execute("SELECT MAX(id) FROM (SELECT id FROM records WHERE stream != ? ORDER BY id "
                                     "LIMIT ?)", (GAP_STREAM, chunk)).fetchone()
            if row[0] is None:
                break
            n = sum(map(len, self._drop("id <= ?", (row[0],), "outbox_full").values()))
            self.stats.inc("outbox_dropped_oldest", n)
            if not n:
                break


# -- reading an outbox from outside the writer (diagnostics, the status document) -------------------------------------

class OutboxUnreadable(OutboxError):
    """The outbox database cannot be opened for reading; the message says why and what to do."""


@dataclass(frozen=True)
class StreamStats:
    """One stream's unsent records, as `edge-agent buffer stats` shows them."""

    stream: str
    kind: str
    records: int
    first_seq: int
    last_seq: int
    oldest_ts_ns: int
    newest_ts_ns: int
    payload_bytes: int


@dataclass(frozen=True)
class LatestRecord:
    """The newest unsent record of a stream."""

    stream: str
    kind: str
    ts_ns: int
    quality: str
    payload: dict[str, Any]


def outbox_files(state_dir: Path) -> dict[str, int]:
    """{file name: bytes} of the outbox database and its -wal/-shm files in `state_dir`."""
    return {p.name: p.stat().st_size for p in sorted(Path(state_dir).glob(DB_NAME + "*")) if p.is_file()}


class OutboxView(OutboxReader):
    """Read-only queries on an outbox database for diagnostics and the status document: every SELECT outside the
    writer and the uplink's cursor lives here, so the table layout is known in this module only. Never writes; WAL
    readers do not block the writer (the service may be running)."""

    @classmethod
    def open(cls, state_dir: Path) -> OutboxView:
        """The outbox of `state_dir`, opened read-only; a read-only directory without a -shm file (a stopped
        service on a locked-down system) is read as it is. Raises OutboxUnreadable naming the file and the cause."""
        path = Path(state_dir) / DB_NAME
        if not path.exists():
            raise OutboxUnreadable(f"no outbox at {path} (is this the right state directory? use --state-dir or "
                                   "--config)")
        view = cls.__new__(cls)
        try:
            view.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0, isolation_level=None,
                                        check_same_thread=False)
            view.conn.execute("SELECT 1 FROM records LIMIT 1").fetchall()
            return view
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                raise OutboxUnreadable(f"{path} is not an edge-agent outbox ({e})") from None
            try:  # a read-only directory and no -shm file: the database is not being written, read it as it is
                view.conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True, isolation_level=None,
                                            check_same_thread=False)
                view.conn.execute("SELECT 1 FROM records LIMIT 1").fetchall()
                return view
            except sqlite3.Error:
                pass
            import os
            hint = " (permission: run as root or a member of the edge-agent group)" \
                if not os.access(path, os.R_OK) else ""
            raise OutboxUnreadable(f"cannot read the outbox {path}: {e}{hint}") from None

    def head(self) -> tuple[int, int | None]:
        """(records waiting, the oldest record's ts_ns or None)."""
        depth, oldest = self.conn.execute("SELECT COUNT(*), MIN(ts_ns) FROM records").fetchone()
        return int(depth), oldest

    def first_ts_ns(self) -> int | None:
        """The timestamp of the record that will be published next (the lowest id), None when empty."""
        row = self.conn.execute("SELECT ts_ns FROM records ORDER BY id LIMIT 1").fetchone()
        return int(row[0]) if row else None

    def stream_heads(self) -> dict[str, tuple[str, int]]:
        """{stream: (kind, next seq)} for every stream ever written."""
        return {s: (k, n) for s, k, n in self.conn.execute("SELECT stream, kind, next_seq FROM streams")}

    def latest_per_stream(self) -> list[LatestRecord]:
        """The newest unsent record of each stream."""
        return [LatestRecord(stream, kind, ts_ns, quality, json.loads(payload))
                for stream, kind, ts_ns, quality, payload in self.conn.execute(
                    "SELECT r.stream, r.kind, r.ts_ns, r.quality, r.payload FROM records r "
                    "JOIN (SELECT stream, MAX(id) AS id FROM records GROUP BY stream) m ON r.id = m.id")]

    def gap_summary(self) -> tuple[int, int]:
        """(unsent gap events on stream `outbox`, the records they say were dropped)."""
        events, dropped = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(json_extract(payload, '$.count')), 0) FROM records "
            "WHERE stream = ? AND kind = 'event'", (GAP_STREAM,)).fetchone()
        return int(events), int(dropped)

    def stream_stats(self) -> list[StreamStats]:
        """Per stream and kind: record count, seq range, oldest and newest timestamps, payload bytes."""
        return [StreamStats(*r) for r in self.conn.execute(
            "SELECT stream, kind, COUNT(*), MIN(seq), MAX(seq), MIN(ts_ns), MAX(ts_ns), SUM(LENGTH(payload)) "
            "FROM records GROUP BY stream, kind ORDER BY stream").fetchall()]

    def pages(self) -> tuple[int, int, int]:
        """(page size, pages, free pages) of the database file."""
        c = self.conn
        return (c.execute("PRAGMA page_size").fetchone()[0], c.execute("PRAGMA page_count").fetchone()[0],
                c.execute("PRAGMA freelist_count").fetchone()[0])

    def meta(self) -> dict[str, str]:
        """The meta table (schema_version, created_ns)."""
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def select(self, streams: list[str] | None, after_id: int = 0, limit: int = 1000,
               before_ns: int | None = None) -> list[Record]:
        """Records with id > `after_id` (of `streams`, older than `before_ns` when given), oldest first."""
        sql = "SELECT id, stream, seq, ts_ns, kind, quality, payload FROM records WHERE id > ?"
        params: list[Any] = [after_id]
        if streams:
            sql += f" AND stream IN ({','.join('?' * len(streams))})"
            params += streams
        if before_ns is not None:
            sql += " AND ts_ns < ?"
            params.append(before_ns)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        return [Record(r[0], r[1], r[2], r[3], r[4], Quality(r[5]), json.loads(r[6]))
                for r in self.conn.execute(sql, params).fetchall()]

    def tail_start(self, streams: list[str] | None, last: int) -> int:
        """The id cursor after which the newest `last` records (of `streams`) follow; `last` 0 or no such
        records: the current end (only new records follow)."""
        max_id = self.max_id()
        rows = self.conn.execute("SELECT id FROM records WHERE id <= ?" + (
            f" AND stream IN ({','.join('?' * len(streams))})" if streams else "") + " ORDER BY id DESC LIMIT ?",
                                 [max_id, *(streams or []), last]).fetchall() if last else []
        return (rows[-1][0] - 1) if rows else max_id

    def count_purgeable(self, streams: list[str] | None, before_ns: int | None) -> int:
        """How many records `Outbox.purge(streams, before_ns)` would delete (gap events are never purged)."""
        sql = "SELECT COUNT(*) FROM records WHERE stream != ?"
        params: list[Any] = [GAP_STREAM]
        if streams:
            sql += f" AND stream IN ({','.join('?' * len(streams))})"
            params += streams
        if before_ns is not None:
            sql += " AND ts_ns < ?"
            params.append(before_ns)
        return int(self.conn.execute(sql, params).fetchone()[0])

    def quick_check(self) -> str:
        """SQLite's `PRAGMA quick_check`: "ok", or what is damaged."""
        return str(self.conn.execute("PRAGMA quick_check").fetchone()[0])
