"""`edge-agent ingest`: MQTT to PostgreSQL, every record exactly once.

Owns the ingest process: one paho client (MQTT 5, persistent session, QoS 1, manual acknowledgement) subscribed to
`$share/<group>/<prefix>/+/+/+` (so N processes with the same group split the load) and, unshared, to the
retained `<prefix>/+/status`; and one PostgreSQL connection that writes what arrives in batches.

Exactly once: every data table has the primary key (agent, stream, seq) and rows go in with `ON CONFLICT DO
NOTHING`, so the duplicates that at-least-once delivery produces (an agent killed before its PUBACK, an ingest
process killed before its commit) are dropped by the database. A message is acknowledged (PUBACK) only after the
transaction that stored it has committed; until then the broker keeps it in this process's session and delivers it
again after a crash. PUBACKs go out in the order the messages arrived, and only on the connection they arrived on
(a message id of a lost connection means nothing on the next one; the broker re-delivers those).

Batching: records are parsed and checked in Python, sorted by key and COPied straight into their table inside a
savepoint; if a key is already there (a duplicate), the savepoint is rolled back and the batch goes through a
per-connection temporary table and `INSERT ... SELECT ... ORDER BY key ON CONFLICT DO NOTHING RETURNING`. The runs
of seqs inserted go to `arrivals` in the same transaction; agent/fleet/gaps.py folds those into watermarks and
holes.

Bad input (a body that is not JSON, a record without a seq, an agent or stream that contradicts its topic) is
logged with the topic and the reason, counted, stored in `rejected` and acknowledged: it would be rejected again on
every delivery. A database that goes away is retried with back-off; nothing is acknowledged meanwhile.

Must not: import psycopg at module import time (the agent never needs it), touch agent state directories.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.records import KINDS

log = logging.getLogger("edge_agent.ingest")

QUALITIES = frozenset({"good", "uncertain", "bad"})
COMMON = ("agent", "stream", "seq", "ts", "quality", "historical")

# kind -> (table, columns after the common ones); the column lists are what COPY writes
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "reading": ("readings", ("value", "unit", "error")),
    "features": ("features", ("unit", "rate_hz", "n", "gap_before", "features", "extra")),
    "event": ("events", ("event", "body")),
    "health": ("health", ("body",)),
    "capture": ("captures", ("body",)),
    "status": ("status_records", ("body",)),
}
TABLE_ORDER = [TABLES[k][0] for k in KINDS]  # a fixed order: two processes take row locks in the same order


def load_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise RuntimeError("the fleet commands need the PostgreSQL driver psycopg 3: "
                           "pip install 'edge-agent[fleet]' (or pip install 'psycopg[binary]')") from e
    return psycopg


def schema_sql() -> str:
    from importlib.resources import files
    return files("agent.fleet").joinpath("schema.sql").read_text()


def ensure_schema(conn: Any) -> None:
    """Create the tables if missing (idempotent; two processes starting together serialise on a lock)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(4242020)")
        conn.execute(schema_sql())


def runs(new: list[tuple[str, str, int]], kind: str, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Runs of consecutive seqs among the rows just inserted -> arrivals rows (agent, stream, kind, first, last, n,
    time of the run's last record)."""
    ts = {(r[0], r[1], r[2]): r[3] for r in rows}
    out: list[tuple[Any, ...]] = []
    run: list[Any] = []
    for a, s, q in sorted(new):
        if run and run[0] == a and run[1] == s and q == run[4] + 1:
            run[4] = q
            run[5] += 1
        else:
            if run:
                out.append((*run[:6], ts[(run[0], run[1], run[4])]))
            run = [a, s, kind, q, q, 1]
    if run:
        out.append((*run[:6], ts[(run[0], run[1], run[4])]))
    return out


class BadMessage(ValueError):
    pass


def _num(v: Any, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadMessage(f"{where}: expected a number or null, found {type(v).__name__} {v!r:.40}")
    return float(v)


def _int(v: Any, where: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadMessage(f"{where}: expected an integer or null, found {v!r:.40}")
    return v


def _ts(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise BadMessage(f"{where}.ts: expected an ISO 8601 UTC time like 2026-11-29T07:20:00.123Z, found {v!r:.40}")
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise BadMessage(f"{where}.ts: expected an ISO 8601 UTC time like 2026-11-29T07:20:00.123Z, "
                         f"found {v!r:.40}") from None
    if dt.tzinfo is None:
        raise BadMessage(f"{where}.ts: expected a time zone (Z), found {v!r:.40}")
    return v


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


def parse_message(topic: str, payload: bytes, prefix: str) -> tuple[str, str, str, list[tuple[Any, ...]]]:
    """One data message -> (agent, kind, stream, rows for the kind's table). Raises BadMessage naming what is
    wrong and where. A batch (a JSON array) gives several rows, all of the topic's stream."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix:
        raise BadMessage(f"topic {topic}: expected {prefix}/<agent>/<kind>/<stream>")
    _, agent, kind, stream = parts
    if kind not in TABLES:
        raise BadMessage(f"topic {topic}: expected a kind out of {', '.join(KINDS)}, found {kind!r}")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadMessage(f"topic {topic}: the body is not JSON ({e})") from None
    items = body if isinstance(body, list) else [body]
    if not items:
        raise BadMessage(f"topic {topic}: an empty batch")
    rows = []
    for i, item in enumerate(items):
        where = f"topic {topic}" + (f" [{i}]" if isinstance(body, list) else "")
        if not isinstance(item, dict):
            raise BadMessage(f"{where}: expected a JSON object, found {type(item).__name__}")
        if item.get("agent") != agent or item.get("stream") != stream:
            raise BadMessage(f"{where}: agent/stream {item.get('agent')!r}/{item.get('stream')!r} "
                             f"contradict the topic ({agent!r}/{stream!r})")
        seq = item.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise BadMessage(f"{where}.seq: expected an integer >= 0, found {seq!r:.40}")
        ts = _ts(item.get("ts"), where)
        quality = item.get("quality")
        if quality not in QUALITIES:
            raise BadMessage(f"{where}.quality: expected good, uncertain or bad, found {quality!r:.40}")
        historical = item.get("historical") is True
        if kind == "reading":
            unit, error = item.get("unit"), item.get("error")
            extra: tuple[Any, ...] = (_num(item.get("value"), where + ".value"),
                                      unit if unit is None else str(unit), error if error is None else str(error))
        elif kind == "features":
            feats = item.get("features")
            if not isinstance(feats, dict):
                raise BadMessage(f"{where}.features: expected an object of per-axis feature tables, "
                                 f"found {feats!r:.40}")
            rest = {k: v for k, v in item.items()
                    if k not in COMMON and k not in ("unit", "rate_hz", "n", "gap_before", "features")}
            unit = item.get("unit")
            extra = (unit if unit is None else str(unit), _num(item.get("rate_hz"), where + ".rate_hz"),
                     _int(item.get("n"), where + ".n"), _int(item.get("gap_before"), where + ".gap_before"),
                     _dumps(feats), _dumps(rest) if rest else None)
        else:
            rest = {k: v for k, v in item.items() if k not in COMMON}
            if kind == "event":
                ev = rest.get("event")
                extra = (ev if ev is None else str(ev), _dumps(rest))
                if ev == "gap" and stream == "outbox":
                    check_gap_event(rest, where)
            else:
                extra = (_dumps(rest),)
        rows.append((agent, stream, seq, ts, quality, historical, *extra))
    return agent, kind, stream, rows


def check_gap_event(body: dict[str, Any], where: str) -> None:
    if not isinstance(body.get("gap_stream"), str):
        raise BadMessage(f"{where}.gap_stream: expected the name of the stream that lost records, "
                         f"found {body.get('gap_stream')!r:.40}")
    ranges = body.get("ranges")
    if not isinstance(ranges, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in r)
            and 0 <= r[0] <= r[1] for r in ranges):
        raise BadMessage(f"{where}.ranges: expected a list of inclusive [first, last] seq ranges, "
                         f"found {ranges!r:.60}")


def parse_status(topic: str, payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadMessage(f"topic {topic}: the status body is not JSON ({e})") from None
    agent = topic.split("/")[1]
    if not isinstance(body, dict) or body.get("status") not in ("online", "offline"):
        raise BadMessage(f"topic {topic}: expected {{\"status\": \"online\" | \"offline\", ...}}, "
                         f"found {payload[:60]!r}")
    if body.get("agent", agent) != agent:
        raise BadMessage(f"topic {topic}: agent {body.get('agent')!r} contradicts the topic ({agent!r})")
    for k in ("boot", "ts"):
        if body.get(k) is not None:
            _ts(body[k], f"topic {topic}")
    return body


@dataclass
class Incoming:
    mid: int
    qos: int
    epoch: int  # the connection it arrived on
    topic: str
    payload: bytes
    table: str = ""  # where its rows go, once parsed
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    status: dict[str, Any] | None = None
    reject: str = ""  # why it cannot be stored


@dataclass
class Batch:
    messages: list[Incoming] = field(default_factory=list)
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)  # table -> rows
    statuses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    rejected: list[tuple[str, str, bytes]] = field(default_factory=list)  # topic, reason, payload
    records: int = 0
    first_at: float = 0.0


@dataclass
class IngestStats:
    messages: int = 0
    records: int = 0  # rows handed to the database (duplicates included)
    inserted: int = 0  # rows that were new
    rejected: int = 0
    ignored: int = 0
    commits: int = 0
    db_errors: int = 0
    slow_batches: int = 0  # table batches that met a duplicate and went through the stage

    def line(self) -> str:
        return (f"{self.messages} messages, {self.records} records ({self.inserted} new, "
                f"{self.records - self.inserted} duplicates), {self.rejected} rejected, {self.commits} commits")


class Ingest:
    def __init__(self, broker_url: str, dsn: str, *, prefix: str = "edge", group: str = "edge-ingest",
                 client_id: str | None = None, batch_max: int = 5000, batch_ms: float = 50.0,
                 receive_max: int = 1000, session_expiry_s: int = 7 * 24 * 3600, username: str | None = None,
                 password: str | None = None, keepalive_s: int = 30, fold_interval_s: float = 1.0,
                 leave: bool = False) -> None:
        from agent.config import Broker
        self.broker = Broker.parse(broker_url)
        self.dsn = dsn
        self.prefix = prefix
        self.group = group
        self.client_id = client_id or f"edge-ingest-{socket.gethostname()}"
        self.batch_max = batch_max
        self.batch_s = batch_ms / 1000
        self.receive_max = receive_max
        self.session_expiry_s = session_expiry_s
        self.username, self.password = username, password
        self.keepalive_s = keepalive_s
        self.fold_interval_s = fold_interval_s
        self.fast_path = True  # COPY straight into the tables while there are no duplicates (tests turn it off)
        self.leave = leave  # retire this member: unsubscribe, store what the broker still holds, end the session
        self.stats = IngestStats()
        self.data_topic = f"{prefix}/+/+/+"
        self.sub_topic = f"$share/{group}/{self.data_topic}" if group else self.data_topic
        self.status_topic = f"{prefix}/+/status"
        self._queue: queue.Queue[Incoming] = queue.Queue()
        self._epoch = 0
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._conn: Any = None
        self._client: Any = None

    # -- MQTT (paho's network thread) -------------------------------------------------------------------------

    def _make_client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
        if self.broker.tls:
            import ssl
            c.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        if self.username:
            c.username_pw_set(self.username, self.password)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_max
        self._connect_props = props
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_message = self._on_message
        c.reconnect_delay_set(0.1, 1)  # back before the agents: see docs/fleet.md, broker restarts
        return c

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("the broker %s refused the connection: %s", self.broker.url, reason_code)
            return
        self._epoch += 1
        self._connected.set()
        log.info("connected to %s as %s (session %s)", self.broker.url, self.client_id,
                 "resumed" if flags.session_present else "new")
        if self.leave:
            client.unsubscribe([self.sub_topic, self.status_topic])
        else:
            client.subscribe([(self.sub_topic, 1), (self.status_topic, 1)])

    def _on_unsubscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        log.info("unsubscribed from %s; storing what the session still holds", self.sub_topic)
        self._subscribed.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            log.error("the broker refused the subscription to %s / %s: %s (shared subscriptions need MQTT 5 "
                      "and a broker that supports them, e.g. mosquitto 2)", self.sub_topic, self.status_topic,
                      ", ".join(bad))
            return
        log.info("subscribed to %s and %s", self.sub_topic, self.status_topic)
        self._subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("lost the broker %s (%s); reconnecting, unacknowledged messages will be delivered again",
                        self.broker.url, reason_code)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._queue.put(Incoming(msg.mid, msg.qos, self._epoch, msg.topic, bytes(msg.payload)))

    # -- PostgreSQL ------------------------------------------------------------------------------------------

    def _connect_db(self) -> None:
        psycopg = load_psycopg()
        delay = 0.2
        while not self._stop.is_set():
            try:
                conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=10)
                break
            except psycopg.OperationalError as e:
                log.warning("cannot reach PostgreSQL (%s); retrying in %.1f s", str(e).strip(), delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10)
        else:
            return
        conn.commit()
        conn.autocommit = True
        ensure_schema(conn)
        conn.autocommit = False
        with conn.cursor() as cur:
            for table, _cols in TABLES.values():
                cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} "
                            f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        conn.commit()
        self._conn = conn

    def _write(self, batch: Batch) -> int:
        """One transaction: COPY into the stages, move into the tables (duplicates dropped), note arrivals,
        statuses, rejects. Returns the number of new rows."""
        conn = self._conn
        inserted = 0
        arrivals: list[tuple[Any, ...]] = []
        with conn.cursor() as cur:
            for kind, (table, cols) in TABLES.items():
                rows = batch.rows.get(table)
                if not rows:
                    continue
                allcols = ", ".join((*COMMON, *cols))
                rows = sorted(rows, key=lambda r: (r[0], r[1], r[2]))  # key order: no deadlock between processes
                new = self._copy_fast(cur, table, allcols, rows) if self.fast_path else None
                if new is None:  # a duplicate (after a crash, a re-send): through the stage, duplicates dropped
                    with cur.copy(f"COPY stage_{table} ({allcols}) FROM STDIN") as cp:
                        for r in rows:
                            cp.write_row(r)
                    cur.execute(f"INSERT INTO {table} ({allcols}) SELECT {allcols} FROM stage_{table} "
                                "ORDER BY agent, stream, seq ON CONFLICT (agent, stream, seq) DO NOTHING "
                                "RETURNING agent, stream, seq")
                    new = cur.fetchall()
                    self.stats.slow_batches += 1
                inserted += len(new)
                arrivals.extend(runs(new, kind, rows))
            if "events" in batch.rows:
                gap_rows = []
                for r in batch.rows["events"]:
                    if r[1] == "outbox" and r[6] == "gap":
                        body = json.loads(r[7])
                        for a, b in body["ranges"]:
                            gap_rows.append((r[0], body["gap_stream"], a, b, body.get("reason"), r[2], r[3]))
                if gap_rows:
                    cur.executemany(
                        "INSERT INTO gaps (agent, stream, first_seq, last_seq, reason, event_seq, ts) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", gap_rows)
                    cur.executemany(
                        "INSERT INTO arrivals (agent, stream, kind, first_seq, last_seq, n, last_ts, at) "
                        "VALUES (%s, %s, 'gap', %s, %s, 0, NULL, now())",
                        [(g[0], g[1], g[2], g[3]) for g in gap_rows])
            if arrivals:
                cur.execute("INSERT INTO arrivals (agent, stream, kind, first_seq, last_seq, n, last_ts, at) "
                            "SELECT a, s, k, f, l, n, t, now() FROM unnest(%s::text[], %s::text[], %s::text[], "
                            "%s::bigint[], %s::bigint[], %s::bigint[], %s::timestamptz[]) AS u(a, s, k, f, l, n, t)",
                            [list(c) for c in zip(*arrivals)])
            for agent, body in batch.statuses:
                cur.execute(
                    "INSERT INTO agents (agent, status, version, config, boot, status_ts, status_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, now()) ON CONFLICT (agent) DO UPDATE SET "
                    "status = EXCLUDED.status, status_at = EXCLUDED.status_at, "
                    "version = coalesce(EXCLUDED.version, agents.version), "
                    "config = coalesce(EXCLUDED.config, agents.config), "
                    "boot = coalesce(EXCLUDED.boot, agents.boot), "
                    "status_ts = coalesce(EXCLUDED.status_ts, agents.status_ts)",
                    (agent, body["status"], body.get("version"), body.get("config"), body.get("boot"),
                     body.get("ts")))
            if batch.rejected:
                cur.executemany("INSERT INTO rejected (topic, reason, payload) VALUES (%s, %s, %s)",
                                batch.rejected)
        conn.commit()
        return inserted

    def _classify(self, m: Incoming) -> None:
        """Parse one message into rows, a status, a rejection, or nothing (another consumer's topic)."""
        parts = m.topic.split("/")
        try:
            if len(parts) == 3 and parts[2] == "status":
                m.status = parse_status(m.topic, m.payload)
            elif len(parts) == 4 and parts[2] in ("cmd",):
                self.stats.ignored += 1  # downlink commands to the agents: not data
            else:
                _, kind, _, m.rows = parse_message(m.topic, m.payload, self.prefix)
                m.table = TABLES[kind][0]
        except BadMessage as e:
            m.reject = str(e)

    @staticmethod
    def _add(batch: Batch, m: Incoming) -> None:
        if not batch.messages:
            batch.first_at = time.monotonic()
        batch.messages.append(m)
        if m.reject:
            batch.rejected.append((m.topic, m.reject, m.payload))
        elif m.status is not None:
            batch.statuses.append((m.topic.split("/")[1], m.status))
        elif m.rows:
            batch.rows.setdefault(m.table, []).extend(m.rows)
            batch.records += len(m.rows)

    def _flush(self, batch: Batch) -> None:
        psycopg = load_psycopg()
        while True:
            if self._conn is None:
                self._connect_db()
                if self._conn is None:
                    return  # stopping; nothing acknowledged, the broker delivers it again
            try:
                inserted = self._write(batch)
                break
            except psycopg.OperationalError as e:
                self.stats.db_errors += 1
                log.warning("PostgreSQL failed while storing %d records (%s); reconnecting, nothing was "
                            "acknowledged", batch.records, str(e).strip())
                self._drop_db()
            except psycopg.errors.DeadlockDetected:
                self.stats.db_errors += 1
                self._conn.rollback()
                time.sleep(random.uniform(0, 0.05))
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as e:
                # a value PostgreSQL refuses: store the messages one by one to find which
                self._conn.rollback()
                if len(batch.messages) == 1:
                    m = batch.messages[0]
                    m.reject = f"topic {m.topic}: PostgreSQL refused it: {str(e).strip()}"
                    one = Batch()
                    m.rows, m.status = [], None
                    self._add(one, m)
                    batch = one
                    continue
                for m in batch.messages:
                    one = Batch()
                    self._add(one, m)
                    self._flush(one)
                return
        for _, reason, _ in batch.rejected:
            log.error("rejected: %s", reason)
        st = self.stats
        st.commits += 1
        st.messages += len(batch.messages)
        st.records += batch.records
        st.inserted += inserted
        st.rejected += len(batch.rejected)
        self._ack(batch)

    def _ack(self, batch: Batch) -> None:
        """PUBACK, in arrival order, what this transaction stored. Messages of an earlier connection are left
        alone: the broker delivers them again on the new one and the database drops the duplicates."""
        epoch = self._epoch
        for m in batch.messages:
            if m.qos > 0 and m.epoch == epoch:
                self._client.ack(m.mid, m.qos)

    @staticmethod
    def _copy_fast(cur: Any, table: str, allcols: str, rows: list[tuple[Any, ...]]) -> list[Any] | None:
        """COPY straight into the table, inside a savepoint: the common case, no duplicates, at the cost of a raw
        COPY. None if a key is already there (or twice in the batch): the savepoint is rolled back."""
        psycopg = load_psycopg()
        cur.execute("SAVEPOINT fast")
        try:
            with cur.copy(f"COPY {table} ({allcols}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
        except psycopg.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT fast")
            return None
        cur.execute("RELEASE SAVEPOINT fast")
        return [(r[0], r[1], r[2]) for r in rows]

    def _drop_db(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:
            pass
        self._conn = None

    def stop(self) -> None:
        self._stop.set()

    def run(self, duration_s: float | None = None, ready: threading.Event | None = None) -> int:
        """Ingest until stop() (SIGINT/SIGTERM) or `duration_s`; commits and acknowledges what it holds, then
        disconnects. Returns the exit code."""
        from agent.fleet.gaps import fold
        self._connect_db()
        if self._conn is None:
            return 1
        client = self._client = self._make_client()
        client.connect_async(self.broker.host, self.broker.port, keepalive=self.keepalive_s, clean_start=False,
                             properties=self._connect_props)
        client.loop_start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        if not self._subscribed.wait(30):
            log.error("no subscription to %s within 30 s; still trying", self.broker.url)
        elif ready is not None:
            ready.set()
        batch = Batch()
        last_fold = last_message = time.monotonic()
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if self.leave and self._subscribed.is_set() and not batch.messages and self._queue.empty() \
                        and time.monotonic() - last_message > 2.0:
                    break  # nothing more in the session (the broker sends what it queued right after CONNACK)
                wait = self.batch_s if not batch.messages else max(
                    0.0, batch.first_at + self.batch_s - time.monotonic())
                try:
                    m = self._queue.get(timeout=min(wait, 0.2))
                    last_message = time.monotonic()
                    while True:
                        self._classify(m)
                        self._add(batch, m)
                        if batch.records >= self.batch_max or len(batch.messages) >= self.receive_max // 2:
                            break
                        m = self._queue.get_nowait()
                except queue.Empty:
                    pass
                now = time.monotonic()
                if batch.messages and (batch.records >= self.batch_max or now - batch.first_at >= self.batch_s
                                       or len(batch.messages) >= self.receive_max // 2):
                    self._flush(batch)
                    batch = Batch()
                if now - last_fold >= self.fold_interval_s and self._conn is not None:
                    last_fold = now
                    try:
                        fold(self._conn, wait=False)
                    except load_psycopg().OperationalError:
                        self._drop_db()
            if batch.messages:
                self._flush(batch)
            if self._conn is not None:
                fold(self._conn, wait=False)
        finally:
            self._stop.set()
            if self.leave and self._subscribed.is_set():
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = 0  # end the session: the group no longer counts this member
                client.disconnect(properties=props)
                log.info("left the group %r: session %s ended", self.group, self.client_id)
            else:
                client.disconnect()
            client.loop_stop()
            self._drop_db()
        log.info("ingest stopped: %s", self.stats.line())
        return 0
