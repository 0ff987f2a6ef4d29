"""The store: a durable SQLite outbox (WAL) — the only writer of the outbox database.

Every record is committed here before anything is sent. One writer thread owns the write connection: it takes
`Emit`s from a bounded queue (`put`, or `put_many` for a producer's batch: a list under one lock, handed over a
group commit at a time), gives each a per-stream `seq` (persisted in the same transaction, so a restart
continues every sequence and never repeats one), and commits them in group commits (every `commit_interval_ms`
or `commit_max_records`) so an SD card is not written per sample. Acknowledged records (PUBACK received by the
uplink) are deleted by the same thread.

Faults are survived, not raised: a full disk, a read-only file system or an I/O error rolls the transaction back,
keeps the batch in memory, is counted and reported once (`fault_info()` says why and what to do), and the write is
retried with back-off (at most 1 s) until it succeeds. On a full disk each retry first commits the acknowledged
deletes on their own (a deletes-only transaction needs no new pages), truncates the WAL (`wal_checkpoint(TRUNCATE)`)
and gives free pages back (incremental vacuum), releasing `outbox.reserve` (a few hundred KB kept for this) if
needed: the outbox recovers by itself as soon as the broker takes the backlog.

Bounds: `max_mb` counts the database's used pages plus the WAL; `min_free_mb` is a free-space floor on the file
system (one statvfs per group commit). Past either, the configured policy drops the oldest records (`drop_oldest`)
or refuses the newest (`drop_newest`), reason `outbox_full`; with `max_age_h`, records older than that are dropped
too (reason `expired`). Every dropped range is published as a `gap` event on stream `outbox`.

Nothing leaves silently: a record that is never committed (a full queue, a shutdown while the database cannot be
written, a record that can never be committed) has no seq, so it is counted per stream and published as a `gap`
event with reason `not_committed`, its count and time range. If even that cannot be committed at shutdown, the
tally goes to `outbox.lost` (pre-allocated, rewritten in place: needs no free space) and is published at the next
start.

Readers open their own connections: the uplink with `Outbox.reader()`, diagnostics and the status document with
`OutboxView` (at the end of this module: every read query on the outbox tables lives here).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import OutboxConfig
from agent.errors import OutboxError
from agent.records import Emit, Record, iso_ts, payload_json
from agent.stats import Stats
from hal.types import Quality, now_ns

log = logging.getLogger("edge_agent.outbox")

DB_NAME = "outbox.db"
LOST_NAME = "outbox.lost"  # tally of records not committed, when the database could not take it at shutdown
RESERVE_NAME = "outbox.reserve"  # space given back to the file system to recover from a full disk
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


class _StillFull(sqlite3.OperationalError):
    """The disk is still too full to try new records (raised without touching the database)."""


class LostTally:
    """Records that left the agent without being committed (so without a seq), per stream: how many, and the
    time range of their values. Thread-safe: the producer side (a full queue) and the writer both add to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_stream: dict[str, list[int]] = {}  # stream -> [count, first_ts_ns, last_ts_ns]

    def add(self, stream: str, ts_ns: int, n: int = 1) -> None:
        self.merge({stream: [n, ts_ns, ts_ns]})

    def merge(self, other: dict[str, list[int]]) -> None:
        with self._lock:
            for stream, (n, first, last) in other.items():
                cur = self._by_stream.get(stream)
                if cur is None:
                    self._by_stream[stream] = [int(n), int(first), int(last)]
                else:
                    cur[0] += int(n)
                    cur[1] = min(cur[1], int(first))
                    cur[2] = max(cur[2], int(last))

    def take(self) -> dict[str, list[int]]:
        with self._lock:
            out, self._by_stream = self._by_stream, {}
        return out

    def snapshot(self) -> dict[str, list[int]]:
        with self._lock:
            return {k: list(v) for k, v in self._by_stream.items()}

    def __bool__(self) -> bool:
        return bool(self._by_stream)

    def total(self) -> int:
        with self._lock:
            return sum(v[0] for v in self._by_stream.values())


class LostFile:
    """`outbox.lost`: the tally of records not committed, kept outside the database for when the database cannot
    take it (a full disk, a read-only file system) at shutdown; published as gap events at the next start.

    The file is allocated once (two slots of `SLOT` bytes, written out, not sparse), so saving overwrites blocks the
    file system already gave us: it needs no free space. Each save goes to the slot its generation selects and
    carries a CRC; a torn write leaves the other slot intact. The database records the generation it has
    published (meta `lost_published_gen`), so a tally is never published twice."""

    SLOT = 16384

    def __init__(self, path: Path) -> None:
        self.path = path

    def allocate(self) -> bool:
        if self.path.exists() and self.path.stat().st_size >= 2 * self.SLOT:
            return True
        try:
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(b"\0" * (2 * self.SLOT))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
            return True
        except OSError as e:
            log.warning("cannot allocate %s (%s): a tally of unsaved records could only be logged", self.path, e)
            return False

    def read(self) -> tuple[int, dict[str, list[int]]]:
        """(generation, tally) of the newest valid slot; (0, {}) without one."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return 0, {}
        best: tuple[int, dict[str, list[int]]] = (0, {})
        for k in range(2):
            raw = data[k * self.SLOT:(k + 1) * self.SLOT].split(b"\0", 1)[0]
            crc, _, body = raw.partition(b" ")
            try:
                if int(crc, 16) != zlib.crc32(body):
                    continue
                doc = json.loads(body)
                gen, tally = int(doc["gen"]), {str(s): [int(x) for x in v] for s, v in doc["lost"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if gen > best[0]:
                best = (gen, tally)
        return best

    def write(self, gen: int, tally: dict[str, list[int]]) -> None:
        """Save in place (raises OSError)."""
        items = sorted(tally.items(), key=lambda kv: -kv[1][0])
        while True:
            body = json.dumps({"gen": gen, "lost": dict(items)}, separators=(",", ":")).encode()
            if len(body) < self.SLOT - 16 or len(items) < 2:
                break
            # too many streams for a slot: fold the smallest two into one entry, the total stays exact
            (_, a), (_, b) = items[-2], items[-1]
            items = items[:-2] + [("(other streams)", [a[0] + b[0], min(a[1], b[1]), max(a[2], b[2])])]
        line = f"{zlib.crc32(body):08x} ".encode() + body
        if not self.path.exists():
            self.allocate()
        with open(self.path, "r+b") as f:
            f.seek((gen % 2) * self.SLOT)
            f.write(line + b"\0" * (self.SLOT - len(line)))
            f.flush()
            os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fault_cause(e: BaseException | str) -> str:
    """What a write error means for the operator: `disk_full`, `read_only`, `io_error`, `corrupt` or `error`."""
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int):
        primary = code & 0xFF
        if primary == 13:
            return "disk_full"
        if primary == 8:
            return "read_only"
        if primary == 10:
            return "io_error"
        if primary in (11, 26):
            return "corrupt"
    msg = str(e).lower()
    if "full" in msg or "no space" in msg:
        return "disk_full"
    if "readonly" in msg or "read-only" in msg or "read only" in msg:
        return "read_only"
    if "i/o" in msg or "disk i/o" in msg:
        return "io_error"
    if "malformed" in msg or "not a database" in msg:
        return "corrupt"
    return "error"


FAULT_FIXES = {
    "disk_full": "the file system of the state directory is full: free space there (sudo journalctl "
                 "--vacuum-size=50M; sudo apt clean; remove large files); the agent also frees its own space as soon "
                 "as the broker takes the backlog. Lower outbox.max_mb or raise outbox.min_free_mb to keep a margin",
    "read_only": "the file system was remounted read-only (often a failing SD card: "
                 "dmesg | grep -i 'remount\\|error'); replace the card or fsck it, then restart the service",
    "io_error": "the storage reports I/O errors (a failing SD card or USB disk: dmesg | grep -i error); back up "
                "(edge-agent buffer export) and replace it",
    "corrupt": "the outbox database is damaged: stop the service, export what is readable (edge-agent buffer "
               "export -o backup.jsonl), move outbox.db* aside, start again",
    "error": "see the error message; edge-agent doctor checks the state directory",
}


class Outbox:
    def __init__(self, state_dir: Path, config: OutboxConfig, stats: Stats | None = None,
                 queue_size: int = 20000) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME
        self.config = config
        self.stats = stats or Stats()
        # the hand-off to the writer: a list under one lock, swapped or cut by the writer once per group commit.
        # A producer wakes the writer only when a commit's worth is waiting (or a flush asks), not per record.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # settled records (flush waits on it)
        self._ready = threading.Condition(self._lock)  # records waiting (the writer waits on it)
        self._inbox: list[Emit] = []
        self._capacity = queue_size
        self._want = 0  # how many records the waiting writer wants; 0: it is not waiting
        self._flushers = 0  # flush() calls waiting
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._next_seq: dict[str, int] = {}
        self._kinds: dict[str, str] = {}
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._accepted = 0  # emits accepted into the queue
        self._settled = 0  # emits committed, or dropped and counted
        self._fault: str | None = None
        self._fault_cause: str | None = None
        self._fault_since_ns: int | None = None
        self._depth = 0
        self._max_bytes = int(config.max_mb * 1024 * 1024)
        self._floor_bytes = int(config.min_free_mb * 1024 * 1024)
        self._wal_limit = max(64 * 1024, min(4 * 1024 * 1024, self._max_bytes // 8))  # cut to the file system
        self._reserve_bytes = 0
        self._page_size = 4096
        self._last_size_check = 0.0
        self._listeners: list[threading.Event] = []
        self._observers: list[Any] = []  # called with every accepted Emit (status, tail), on the producer's thread
        self._lost = LostTally()  # not committed, not yet published as gap events
        self._lost_file = LostFile(self.state_dir / LOST_NAME)
        self._lost_gen = 0  # highest generation of the lost file published or written
        self._lost_restored_gen = 0  # a generation read at open, published with the next commit
        self.lost_total = 0  # records of this run that left without being committed
        self.lost_saved: str = ""  # where the last tally went at shutdown (for the log line)
        self._nonfault_failures = 0
        self._give_up_at = float("inf")

    # -- life cycle -------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Create or open the database (raises OutboxError naming the path if that is impossible). On a full disk,
        the reserve is given back first: opening a WAL database needs a little space (its -shm and -wal files)."""
        try:
            self._open()
        except OutboxError as e:
            if fault_cause(str(e.__cause__ or e)) != "disk_full" or not self._release_reserve():
                raise
            self._open()

    def _open(self) -> None:
        self._next_seq, self._kinds = {}, {}
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path, self.config.synchronous)
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new database only
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":  # persists in the file
                conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_ns', ?)", (str(now_ns()),))
            for stream, kind, next_seq in conn.execute("SELECT stream, kind, next_seq FROM streams"):
                self._next_seq[stream] = next_seq
                self._kinds[stream] = kind
            self._depth = int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            row = conn.execute("SELECT value FROM meta WHERE key = 'lost_published_gen'").fetchone()
            published_gen = int(row[0]) if row else 0
        except (OSError, sqlite3.Error) as e:
            raise OutboxError(f"cannot open the outbox {self.path}: {e}") from e
        self._conn = conn
        self._configure_space(conn)
        gen, tally = self._lost_file.read()
        self._lost_gen = max(gen, published_gen)
        if gen > published_gen and tally:
            self._lost.merge(tally)
            self._lost_restored_gen = gen
            log.warning("outbox: %d records were not committed before the last stop (%s); publishing them as gap "
                        "events", sum(v[0] for v in tally.values()), self._lost_file.path)
        self._lost_file.allocate()
        self._ensure_reserve()
        self.stats.set("outbox_depth", self._depth)

    def _configure_space(self, conn: sqlite3.Connection) -> None:
        """Free-space floor, WAL bound, incremental vacuum (converting an existing outbox when there is room)."""
        try:
            st = os.statvfs(self.state_dir)
            total = st.f_blocks * st.f_frsize
        except OSError:
            total = 0
        if total and self._floor_bytes > total // 4:
            log.warning("outbox.min_free_mb = %g MB is more than a quarter of the %.1f MB file system at %s: using "
                        "%.2f MB", self.config.min_free_mb, total / 2**20, self.state_dir, total / 4 / 2**20)
            self._floor_bytes = total // 4
        # the WAL is checkpointed every wal_limit / 2 and truncated past wal_limit: at most 1/16 of the file system
        if total:
            self._wal_limit = max(64 * 1024, min(self._wal_limit, total // 16))
        # the reserve: a file given back to the file system when a full disk must be recovered from; big enough for
        # a checkpoint to move what the WAL holds into the database
        self._reserve_bytes = max(64 * 1024, min(1024 * 1024, total // 8)) if total else 64 * 1024
        try:
            conn.execute(f"PRAGMA journal_size_limit={self._wal_limit}")
            conn.execute(f"PRAGMA wal_autocheckpoint={max(16, self._wal_limit // self._page_size // 2)}")
            if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
                size = self._db_bytes()
                free = self._fs_free()
                if free is not None and free > 2 * size + self._floor_bytes + 1024 * 1024:
                    log.info("outbox %s: switching to incremental vacuum (a one-off VACUUM of %.1f MB)", self.path,
                             size / 2**20)
                    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                    conn.execute("VACUUM")
                else:
                    log.info("outbox %s: too little free space to convert to incremental vacuum now; deleted pages "
                             "are reused, the file does not shrink", self.path)
        except sqlite3.Error as e:
            log.warning("outbox %s: cannot configure space reclaim (%s); deleted pages are reused", self.path, e)

    def start(self) -> None:
        if self._conn is None:
            self.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit everything accepted so far (within `timeout`), then close. While the database cannot be written,
        does not wait: what is not committed is counted, published as a gap event if at all possible, or saved in
        `outbox.lost` for the next start. Returns within about 2 x `timeout`."""
        if self._fault is None:
            self.flush(timeout)
        self._give_up_at = time.monotonic() + timeout / 2  # then count what is left and stop trying
        self._stop.set()
        with self._lock:
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the outbox writer did not finish within %g s (storage hanging?)", timeout)
                self._thread = None
                return  # closing the connection under a running commit would be worse than leaving it
            self._thread = None
        if self._conn is not None:
            try:
                if self._fault is None:
                    self._checkpoint("TRUNCATE")
            except sqlite3.Error:
                pass
            self._conn.close()
            self._conn = None
            if self._fault_cause == "disk_full":
                self._ensure_reserve(at_stop=True)  # from what closing freed (-shm, -wal): the next start needs it

    # -- producer side ----------------------------------------------------------------------------------------

    def put(self, emit: Emit) -> bool:
        """Queue a record for the next group commit. Never blocks; a full queue drops it, counted and published as a
        `not_committed` gap event."""
        with self._lock:
            inbox = self._inbox
            if len(inbox) < self._capacity:
                inbox.append(emit)
                self._accepted += 1
                if self._want and len(inbox) >= self._want:
                    self._ready.notify()
                full = False
            else:
                full = True
        if full:
            self.stats.inc("outbox_dropped_queue_full")
            self._lose([emit])
            return False
        for observe in self._observers:
            try:
                observe(emit)
            except Exception:  # an observer's bug must not lose the record
                log.exception("outbox observer failed")
        return True

    def put_many(self, emits: list[Emit]) -> int:
        """Queue several records, in order, for the next group commit (one lock for all of them). Never blocks;
        what a full queue cannot take (the newest of `emits`) is dropped, each record counted exactly as `put`
        counts it and published as a `not_committed` gap event. Returns how many were accepted."""
        if not emits:
            return 0
        with self._lock:
            inbox = self._inbox
            room = self._capacity - len(inbox)
            if room >= len(emits):
                taken, refused = emits, []
            else:
                room = max(room, 0)
                taken, refused = emits[:room], emits[room:]
            inbox.extend(taken)
            self._accepted += len(taken)
            if self._want and len(inbox) >= self._want:
                self._ready.notify()
        if refused:
            self.stats.inc("outbox_dropped_queue_full", len(refused))
            self._lose(list(refused))
        if self._observers:
            for emit in taken:
                for observe in self._observers:
                    try:
                        observe(emit)
                    except Exception:  # an observer's bug must not lose the record
                        log.exception("outbox observer failed")
        return len(taken)

    def add_observer(self, fn: Any) -> None:
        """Call `fn(emit)` for every record accepted from now on (cheap: it runs on the producer's thread)."""
        self._observers.append(fn)

    def queue_depth(self) -> int:
        return len(self._inbox)

    def ack(self, record_ids: list[int]) -> None:
        """The uplink received PUBACKs for these records: delete them in the next commit."""
        for rid in record_ids:
            self._acks.put(rid)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record accepted so far is committed (or dropped and counted). False on timeout (e.g.
        disk full)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._accepted
            self._flushers += 1  # the writer commits what is waiting now instead of filling a group commit
            try:
                if self._want and self._inbox:
                    self._ready.notify()
                while self._settled < target:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._thread is None:
                        return False
                    self._cond.wait(min(left, 0.1))
            finally:
                self._flushers -= 1
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

    def fault_info(self) -> dict[str, Any] | None:
        """None while the outbox commits; else why it cannot (`cause`: disk_full, read_only, io_error, corrupt,
        error), since when, the error and what to do."""
        if self._fault is None:
            return None
        cause = self._fault_cause or "error"
        return {"cause": cause, "error": self._fault, "since_ns": self._fault_since_ns, "fix": FAULT_FIXES[cause],
                "waiting": self.queue_depth()}

    def not_committed(self) -> dict[str, int]:
        """Records not committed and not yet published as gap events, per stream."""
        return {s: v[0] for s, v in self._lost.snapshot().items()}

    def next_seq(self, stream: str) -> int:
        return self._next_seq.get(stream, 0)

    # -- writer thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.config.commit_interval_ms / 1000.0
        pending: list[Emit] = []
        acks: list[int] = []
        backoff = 0.1
        while True:
            self.stats.progress("outbox")
            stopping = self._stop.is_set()
            want = self.config.commit_max_records - len(pending)
            if want > 0:
                self._take(pending, want, 0 if stopping else interval)
            while True:
                try:
                    acks.append(self._acks.get_nowait())
                except queue.Empty:
                    break
            if not pending and not acks and not self._lost:
                if stopping:
                    return
                continue
            if stopping and time.monotonic() > self._give_up_at:
                self._give_up(pending)
                return
            # while recovering from a full disk, commit in small steps: a big batch may never fit at once
            batch = pending if self._fault_cause != "disk_full" else pending[:64]
            try:
                self._commit(batch, acks)
            except sqlite3.Error as e:
                self._on_fault(e)
                if self._recover(acks):
                    acks = []
                if not _is_fault(e):
                    # not the storage: a commit that will never succeed must not wedge the outbox
                    self._nonfault_failures += 1
                    if self._nonfault_failures >= 3:
                        log.error("outbox: giving up on %d records that cannot be committed (%s)", len(pending), e)
                        self._lose(pending)
                        self._settle(len(pending))
                        pending = []
                        self._nonfault_failures = 0
                if stopping:
                    self._give_up(pending)
                    return
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)  # back in business within a second once space is freed
                continue
            backoff = 0.1
            self._nonfault_failures = 0
            n = len(batch)
            pending, acks = pending[n:], []
            if self._fault is not None and not pending:
                log.warning("outbox writable again (%s)", self.path)
                self._fault = self._fault_cause = self._fault_since_ns = None
                self.stats.set("outbox_fault", "")
            self._settle(n)
            if n:
                for ev in self._listeners:
                    ev.set()
            try:
                self._bound_wal()
                if time.monotonic() - self._last_size_check > 1.0:
                    self._last_size_check = time.monotonic()
                    self._enforce_bounds()
                    self._ensure_reserve()
            except sqlite3.Error as e:
                self._on_fault(e)

    def _take(self, pending: list[Emit], want: int, wait_s: float) -> None:
        """Move up to `want` waiting records to `pending`, first waiting up to `wait_s` for that many (a flush or a
        stop cuts the wait short)."""
        deadline = time.monotonic() + wait_s
        with self._lock:
            while (len(self._inbox) < want and not (self._flushers and self._inbox)
                   and not self._stop.is_set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._want = want
                try:
                    self._ready.wait(left)
                finally:
                    self._want = 0
            inbox = self._inbox
            if len(inbox) <= want:
                pending += inbox
                self._inbox = []
            else:
                pending += inbox[:want]
                del inbox[:want]

    def _settle(self, n: int) -> None:
        with self._cond:
            self._settled += n
            self._cond.notify_all()

    def _lose(self, emits: list[Emit]) -> None:
        """Count records that leave without being committed: published as `not_committed` gap events."""
        if not emits:
            return
        by: dict[str, list[int]] = {}
        for e in emits:
            cur = by.get(e.stream)
            if cur is None:
                by[e.stream] = [1, e.ts_ns, e.ts_ns]
            else:
                cur[0] += 1
                cur[1] = min(cur[1], e.ts_ns)
                cur[2] = max(cur[2], e.ts_ns)
        self._lost.merge(by)
        self.lost_total += len(emits)
        self.stats.inc("outbox_lost_not_committed", len(emits))

    def _give_up(self, pending: list[Emit]) -> None:
        """Stopping while the database cannot be written: everything not committed is counted; its gap events are
        committed if the database takes a small transaction, else the tally goes to `outbox.lost`."""
        leftover = list(pending)
        with self._lock:
            leftover += self._inbox
            self._inbox = []
        self._lose(leftover)
        self.stats.inc("outbox_lost_at_shutdown", len(leftover))
        self._settle(len(leftover))
        try:
            self._commit([], [])  # only the gap events: a few rows
            self.lost_saved = "published as gap events"
            return
        except sqlite3.Error as e:
            self._on_fault(e)
        tally = self._lost.take()
        if not tally:
            return
        try:
            self._lost_gen += 1
            self._lost_file.write(self._lost_gen, tally)
            self.lost_saved = f"saved in {self._lost_file.path}, published as gap events at the next start"
        except OSError as e:
            self._lost.merge(tally)
            self.lost_saved = f"NOT saved ({e}): only this log knows"
            log.error("outbox: cannot save the tally of %d uncommitted records to %s: %s; per stream: %s",
                      sum(v[0] for v in tally.values()), self._lost_file.path, e,
                      {s: v[0] for s, v in tally.items()})

    def _on_fault(self, e: sqlite3.Error) -> None:
        if not isinstance(e, _StillFull):
            self.stats.inc("outbox_write_errors")
        msg = str(e)
        cause = fault_cause(e)
        if self._fault_cause != cause:
            log.error("outbox write failed (%s): %s — keeping records in memory and retrying (%s)",
                      cause.replace("_", " "), msg, self.path)
        if self._fault is None:
            self._fault_since_ns = now_ns()
        self._fault = msg
        self._fault_cause = cause
        self.stats.set("outbox_fault", msg)
        if self._conn is not None and self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # -- space -------------------------------------------------------------------------------------------------

    def _fs_free(self) -> int | None:
        try:
            st = os.statvfs(self.state_dir)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _db_bytes(self) -> int:
        assert self._conn is not None
        return self._page_size * int(self._conn.execute("PRAGMA page_count").fetchone()[0])

    def _wal_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _checkpoint(self, mode: str = "TRUNCATE") -> bool:
        """Copy the WAL into the database and (TRUNCATE) cut it to zero bytes. Waits at most half a second for
        readers; True when the whole WAL was checkpointed."""
        assert self._conn is not None
        conn = self._conn
        conn.execute("PRAGMA busy_timeout=500")
        try:
            busy, _, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            conn.execute("PRAGMA busy_timeout=30000")
        return busy == 0

    def _vacuum(self, max_pages: int = 0) -> None:
        """Give free pages back to the file system (incremental vacuum), in steps that keep the WAL small."""
        assert self._conn is not None
        conn = self._conn
        if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
            return
        left = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        if max_pages:
            left = min(left, max_pages)
        while left > 0:
            step = min(left, 16)
            conn.execute(f"PRAGMA incremental_vacuum({step})").fetchall()
            self._checkpoint("TRUNCATE")
            left -= step

    def _ensure_reserve(self, at_stop: bool = False) -> None:
        """Keep `outbox.reserve` (a few hundred KB) while there is room: the space a full disk is recovered with.
        At a stop on a full disk, whatever closing the database freed (at least 64 KB) is kept instead."""
        path = self.state_dir / RESERVE_NAME
        if self._reserve_bytes <= 0 or path.exists() or (self._fault is not None and not at_stop):
            return
        free = self._fs_free()
        if free is None:
            return
        size = self._reserve_bytes
        if at_stop:
            size = min(size, free - free % 4096)
            if size < 64 * 1024:
                return
        elif free < self._reserve_bytes + self._floor_bytes + self._wal_limit:
            return
        try:
            with open(path, "wb") as f:
                f.write(b"\0" * size)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            try:
                path.unlink()
            except OSError:
                pass

    def _release_reserve(self) -> bool:
        path = self.state_dir / RESERVE_NAME
        try:
            path.unlink()
        except OSError:
            return False
        self.stats.inc("outbox_reserve_released")
        log.warning("outbox: released the %d KB reserve (%s) to recover from a full disk", self._reserve_bytes // 1024,
                    path)
        return True

    def _recover(self, acks: list[int]) -> bool:
        """After a failed commit: commit the acknowledged deletes on their own (they need no new pages), give the
        space back (checkpoint, truncate the WAL, incremental vacuum). True when the acks were committed."""
        if self._conn is None:
            return False
        if self._fault_cause == "disk_full":
            self._release_reserve()
        try:
            self._checkpoint("TRUNCATE")
        except sqlite3.Error:
            pass
        done = not acks
        chunk = 256
        i = 0
        while i < len(acks):
            # each deleted row rewrites part of a page into the WAL: on a nearly full disk, smaller transactions
            # (the WAL truncated between them) need less space at once
            try:
                self._delete(acks[i:i + chunk])
                self._checkpoint("TRUNCATE")
                i += chunk
            except sqlite3.Error as e:
                if chunk <= 4:
                    log.debug("outbox: the deletes-only transaction failed too: %s", e)
                    self._on_fault(e)
                    break
                chunk //= 4
        else:
            done = True
        try:
            self._vacuum()
            self._checkpoint("TRUNCATE")
        except sqlite3.Error:
            if self._conn.in_transaction:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        return done

    def _delete(self, ids: list[int]) -> None:
        """A deletes-only transaction (acknowledged records)."""
        assert self._conn is not None
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(ids))})", ids)
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._depth -= cur.rowcount
        self.stats.inc("outbox_acked", cur.rowcount)
        self.stats.set("outbox_depth", self._depth)

    def _bound_wal(self) -> None:
        """Checkpoint policy, after each group commit: SQLite's automatic (passive) checkpoint runs every
        `wal_limit / 2` of WAL; if readers kept it from restarting the WAL and the file passed `wal_limit`, a
        TRUNCATE checkpoint (waiting at most 0.5 s for readers) cuts it back to zero."""
        if self._wal_bytes() > self._wal_limit:
            self._checkpoint("TRUNCATE")

    def _free_with_db(self) -> int | None:
        """Bytes that new records can still use: free space on the file system plus free pages in the database."""
        free = self._fs_free()
        if free is None:
            return None
        assert self._conn is not None
        return free + self._page_size * int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])

    def _below_floor(self, need: int) -> bool:
        """True when committing `need` more bytes would take the file system below `min_free_mb` (checked once per
        group commit: one statvfs; the database's free pages are counted only when it looks tight)."""
        if self._floor_bytes <= 0:
            return False
        free = self._fs_free()
        if free is None or free - need >= self._floor_bytes:
            return False
        avail = self._free_with_db()
        if avail is not None and avail - need >= self._floor_bytes:
            return False
        if self._wal_bytes() > 0 and self._checkpoint("TRUNCATE"):
            avail = self._free_with_db()
            return avail is None or avail - need < self._floor_bytes
        return True

    def _make_room(self, need: int) -> None:
        """drop_oldest below the free-space floor: drop the oldest records until `need` bytes fit above it."""
        assert self._conn is not None
        for _ in range(100):
            if not self._below_floor(need):
                return
            chunk = max(100, self._depth // 20)
            row = self._conn.execute("SELECT MAX(id) FROM (SELECT id FROM records WHERE stream != ? ORDER BY id "
                                     "LIMIT ?)", (GAP_STREAM, chunk)).fetchone()
            if row[0] is None:
                return  # nothing of ours left to drop: commit anyway, a full disk is then survived as a fault
            n = sum(map(len, self._drop("id <= ?", (row[0],), "outbox_full", "min_free_mb",
                                        counter="outbox_dropped_oldest").values()))
            self._checkpoint("TRUNCATE")
            if not n:
                return

    # -- commits -----------------------------------------------------------------------------------------------

    def _commit(self, pending: list[Emit], acks: list[int]) -> None:
        assert self._conn is not None
        conn = self._conn
        encoded: list[tuple[Emit, str]] = []
        need = 0
        bad: list[Emit] = []
        for e in pending:
            try:
                body = payload_json(e.payload)
            except (TypeError, ValueError) as err:  # cannot ever be committed
                log.error("stream %s: a record that cannot be encoded (%s) is not committed", e.stream, err)
                bad.append(e)
                continue
            encoded.append((e, body))
            need += len(body) + 100
        if bad:
            self._lose(bad)
        if encoded and self._fault_cause == "disk_full":
            free = self._fs_free()
            if free is not None and free < 2 * need + self._reserve_bytes:
                # recovering: new records wait until the deletes gave space back, so that they never take the
                # space the recovery itself needs (a checkpoint, the next deletes)
                raise _StillFull("database or disk is full (new records wait until acknowledged ones free space)")
        policy = self.config_policy()
        low = bool(encoded) and self._below_floor(2 * need)  # the WAL, then the database: written twice
        if low and policy == "drop_oldest":
            self._make_room(2 * need)
        limit = None
        if encoded and policy == "drop_newest":
            limit = "min_free_mb" if low else ("max_mb" if self._over_bound() else None)
        next_seq = dict(self._next_seq)
        kinds = dict(self._kinds)
        rows = []
        touched: set[str] = set()
        for e, body in encoded:
            known = kinds.get(e.stream)
            if known is not None and known != e.kind:
                self.stats.inc("outbox_kind_mismatch")
                log.error("stream %s carries %s records, refusing a %s record", e.stream, known, e.kind)
                continue
            kinds[e.stream] = e.kind
            seq = next_seq.get(e.stream, 0)
            next_seq[e.stream] = seq + 1
            touched.add(e.stream)
            rows.append((e.stream, seq, e.ts_ns, e.kind, str(e.quality), body))
        dropped_newest = 0
        if limit is not None and rows:
            dropped: dict[str, list[int]] = defaultdict(list)
            for r in rows:
                dropped[r[0]].append(r[1])
            rows = self._gap_rows(dropped, "outbox_full", next_seq, kinds, touched, limit)
            dropped_newest = sum(len(v) for v in dropped.values())
        lost = self._lost.take()
        restored_gen = self._lost_restored_gen
        if lost:
            rows = self._lost_rows(lost, next_seq, kinds, touched) + rows
        try:
            conn.execute("BEGIN IMMEDIATE")
            if rows:
                conn.executemany(
                    "INSERT INTO records(stream, seq, ts_ns, kind, quality, payload) VALUES (?, ?, ?, ?, ?, ?)", rows)
            if touched:
                conn.executemany(
                    "INSERT INTO streams(stream, kind, next_seq) VALUES (?, ?, ?) "
                    "ON CONFLICT(stream) DO UPDATE SET next_seq = excluded.next_seq",
                    [(s, kinds[s], next_seq[s]) for s in touched])
            if lost and restored_gen:
                conn.execute("INSERT INTO meta(key, value) VALUES ('lost_published_gen', ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(restored_gen),))
            deleted = 0
            if acks:
                for i in range(0, len(acks), 500):
                    chunk = acks[i:i + 500]
                    cur = conn.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                    deleted += cur.rowcount
            conn.execute("COMMIT")
        except BaseException:
            if lost:
                self._lost.merge(lost)  # published with a later commit, or saved at shutdown
            raise
        if dropped_newest:
            self.stats.inc("outbox_dropped_newest", dropped_newest)
        if lost:
            self._lost_restored_gen = 0
            self.stats.inc("outbox_gap_events_not_committed", len(lost))
        gap_events = sum(1 for r in rows if r[0] == GAP_STREAM) if GAP_STREAM in touched else 0
        if gap_events:
            self.stats.inc("outbox_gap_events", gap_events)
        self._next_seq = next_seq
        self._kinds = kinds
        self._depth += len(rows) - deleted
        self.stats.inc("outbox_committed", len(rows))
        self.stats.inc("outbox_acked", deleted)
        self.stats.set("outbox_depth", self._depth)

    def config_policy(self) -> str:
        return self.config.policy

    def _used_bytes(self) -> int:
        """What the outbox occupies: the database's used pages plus the WAL file."""
        assert self._conn is not None
        c = self._conn
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        return self._page_size * (pages - free) + self._wal_bytes()

    def _over_bound(self) -> bool:
        if self._used_bytes() <= self._max_bytes:
            return False
        if self._wal_bytes() > 0:  # the WAL counts: checkpoint it away before dropping records
            self._checkpoint("TRUNCATE")
        return self._used_bytes() > self._max_bytes

    def _gap_rows(self, dropped: dict[str, list[int]], reason: str, next_seq: dict[str, int],
                  kinds: dict[str, str], touched: set[str], limit: str | None = None) -> list[tuple[Any, ...]]:
        """Gap events (stream `outbox`, kind `event`) naming exactly which seqs of which streams were dropped."""
        rows = []
        ts = now_ns()
        for stream, seqs in sorted(dropped.items()):
            payload: dict[str, Any] = {"event": "gap", "reason": reason, "gap_stream": stream,
                                       "ranges": seq_ranges(seqs), "count": len(seqs)}
            if limit:
                payload["limit"] = limit
            rows.append(self._gap_row(payload, ts, next_seq, kinds, touched))
        return rows

    def _lost_rows(self, lost: dict[str, list[int]], next_seq: dict[str, int], kinds: dict[str, str],
                   touched: set[str]) -> list[tuple[Any, ...]]:
        """Gap events for records that were never committed: no seqs to name, so the count and the time range of
        their values (`first_ts`, `last_ts`)."""
        ts = now_ns()
        return [self._gap_row({"event": "gap", "reason": "not_committed", "gap_stream": stream, "ranges": [],
                               "count": n, "first_ts": iso_ts(first), "last_ts": iso_ts(last)},
                              ts, next_seq, kinds, touched)
                for stream, (n, first, last) in sorted(lost.items())]

    def _gap_row(self, payload: dict[str, Any], ts: int, next_seq: dict[str, int], kinds: dict[str, str],
                 touched: set[str]) -> tuple[Any, ...]:
        seq = next_seq.get(GAP_STREAM, 0)
        next_seq[GAP_STREAM] = seq + 1
        kinds[GAP_STREAM] = "event"
        touched.add(GAP_STREAM)
        return (GAP_STREAM, seq, ts, "event", str(Quality.GOOD), payload_json(payload))

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

    def _drop(self, where: str, params: tuple[Any, ...], reason: str, limit: str | None = None,
              counter: str = "") -> dict[str, list[int]]:
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
        gap_rows = self._gap_rows(dropped, reason, next_seq, kinds, touched, limit)
        conn.executemany(
            "INSERT INTO records(stream, seq, ts_ns, kind, quality, payload) VALUES (?, ?, ?, ?, ?, ?)", gap_rows)
        conn.executemany(
            "INSERT INTO streams(stream, kind, next_seq) VALUES (?, ?, ?) "
            "ON CONFLICT(stream) DO UPDATE SET next_seq = excluded.next_seq",
            [(s, kinds[s], next_seq[s]) for s in touched])
        conn.execute("COMMIT")
        if counter:  # the loss first, then its gap events: a reader of the stats never sees events without it
            self.stats.inc(counter, len(ids))
        self.stats.inc("outbox_gap_events", len(gap_rows))
        self._next_seq, self._kinds = next_seq, kinds
        self._depth += len(gap_rows) - len(ids)
        self.stats.set("outbox_depth", self._depth)
        for ev in self._listeners:
            ev.set()
        return dict(dropped)

    def _enforce_bounds(self) -> None:
        """Age bound (`max_age_h`), then drop_oldest: while over the size bound, delete the oldest records; every
        dropped range is published as a gap event. When the file system is tight, give free pages back."""
        free = self._fs_free()
        if free is not None and free < 2 * (self._floor_bytes + self._reserve_bytes + self._wal_limit):
            self._vacuum(max_pages=256)
        if self.config.max_age_h > 0:
            cutoff = now_ns() - int(self.config.max_age_h * 3600e9)
            n = sum(map(len, self._drop("ts_ns < ?", (cutoff,), "expired", counter="outbox_dropped_expired").values()))
            if n:
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
            n = sum(map(len, self._drop("id <= ?", (row[0],), "outbox_full", "max_mb",
                                        counter="outbox_dropped_oldest").values()))
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
        where, params = _record_filter("id > ?", [after_id], streams, before_ns)
        sql = f"SELECT id, stream, seq, ts_ns, kind, quality, payload FROM records WHERE {where} ORDER BY id LIMIT ?"
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
        where, params = _record_filter("stream != ?", [GAP_STREAM], streams, before_ns)
        return int(self.conn.execute(f"SELECT COUNT(*) FROM records WHERE {where}", params).fetchone()[0])

    def quick_check(self) -> str:
        """SQLite's `PRAGMA quick_check`: "ok", or what is damaged."""
        return str(self.conn.execute("PRAGMA quick_check").fetchone()[0])


def unpublished_lost(state_dir: Path) -> tuple[int, dict[str, int]]:
    """The tally in `outbox.lost` not yet published as gap events (its generation above the database's
    `lost_published_gen`): (generation, {stream: records}); {} when there is none or it was published."""
    gen, tally = LostFile(Path(state_dir) / LOST_NAME).read()
    if not tally:
        return 0, {}
    published = None
    try:
        view = OutboxView.open(state_dir)
        try:
            published = view.meta().get("lost_published_gen")
        finally:
            view.close()
    except (OutboxUnreadable, sqlite3.Error):
        pass
    if published is not None and int(published) >= gen:
        return gen, {}
    return gen, {s: v[0] for s, v in tally.items()}


def _record_filter(first: str, params: list[Any], streams: list[str] | None,
                   before_ns: int | None) -> tuple[str, list[Any]]:
    """A WHERE clause on records: `first`, then only `streams` (when given), then older than `before_ns`."""
    where, params = first, list(params)
    if streams:
        where += f" AND stream IN ({','.join('?' * len(streams))})"
        params += streams
    if before_ns is not None:
        where += " AND ts_ns < ?"
        params.append(before_ns)
    return where, params
