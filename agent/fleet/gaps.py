"""Seq bookkeeping in the fleet database: per stream, the contiguous watermark and the open holes.

Owns the tables `streams` and `holes` and the work queue `arrivals`. The ingest hot path only appends to
`arrivals` (the seq ranges a transaction stored, and the ranges a gap event explains), so ingest processes never
wait on each other for bookkeeping; `fold()` moves what has arrived into `streams` and `holes`, under an advisory
lock so one process folds at a time (each ingest process tries every second; `edge-agent fleet` folds before it
reads).

A stream's seqs start at 0. A seq is *covered* when its record is stored or a gap event on stream `outbox` names it
as dropped. `max_seq` is the highest covered seq; a hole is a range below it that is not covered: a record still
on its way (in an agent's outbox or the broker's queue) or lost without a gap event (which the wire contract says
must not happen). `watermark` = the highest seq with everything up to it covered.

Must not: write data tables, talk MQTT.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

FOLD_LOCK = 4242021

Hole = list[Any]  # [first_seq, last_seq, opened]


def cover(max_seq: int, holes: list[Hole], first: int, last: int, now: Any) -> int:
    """Mark [first, last] covered: shrink or split the holes it overlaps (in place), open a hole between the old
    `max_seq` and `first` if it jumps ahead. Returns the new max_seq."""
    out: list[Hole] = []
    for h in holes:
        if h[1] < first or h[0] > last:
            out.append(h)
            continue
        if h[0] < first:
            out.append([h[0], first - 1, h[2]])
        if h[1] > last:
            out.append([last + 1, h[1], h[2]])
    if first > max_seq + 1:
        out.append([max_seq + 1, first - 1, now])
    out.sort(key=lambda h: h[0])
    holes[:] = out
    return max(max_seq, last)


def watermark(max_seq: int, holes: list[Hole]) -> int:
    return holes[0][0] - 1 if holes else max_seq


def fold(conn: Any, wait: bool = False) -> bool:
    """Fold `arrivals` into `streams`, `holes` and `agents.last_seen`, in one transaction. With wait=False, return
    False at once if another process is folding (it will fold these rows too)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)" if wait else "SELECT pg_try_advisory_xact_lock(%s)",
                    (FOLD_LOCK,))
        got = cur.fetchone()[0]
        if not wait and not got:
            conn.rollback()
            return False
        cur.execute("DELETE FROM arrivals RETURNING agent, stream, kind, first_seq, last_seq, n, last_ts, at")
        arrivals = cur.fetchall()
        if not arrivals:
            conn.commit()
            return True
        cur.execute("SELECT now()")
        now = cur.fetchone()[0]
        by_stream: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        for a in arrivals:
            by_stream.setdefault((a[0], a[1]), []).append(a)
        keys = sorted(by_stream)
        agents = sorted({k[0] for k in keys})
        cur.execute("SELECT agent, stream, kind, max_seq, records, last_ts, last_lag_ms, last_at FROM streams "
                    "WHERE agent = ANY(%s) FOR UPDATE", (agents,))
        state = {(r[0], r[1]): list(r[2:]) for r in cur.fetchall()}
        cur.execute("SELECT agent, stream, first_seq, last_seq, opened FROM holes WHERE agent = ANY(%s) "
                    "ORDER BY first_seq", (agents,))
        holes: dict[tuple[str, str], list[Hole]] = {}
        for r in cur.fetchall():
            holes.setdefault((r[0], r[1]), []).append([r[2], r[3], r[4]])
        stream_rows, hole_rows, seen = [], [], {}
        for key in keys:
            kind, max_seq, records, last_ts, lag_ms, last_at = state.get(key, ["", -1, 0, None, None, None])
            hs = holes.get(key, [])
            for _, _, akind, first, last, n, ats, at in sorted(by_stream[key], key=lambda a: a[3]):
                max_seq = cover(max_seq, hs, first, last, now)
                if akind != "gap":
                    kind = akind
                    records += n
                    if ats is not None and (last_ts is None or ats >= last_ts):
                        last_ts, last_at = ats, at
                        lag_ms = (at - ats).total_seconds() * 1000
                    seen[key[0]] = max(seen.get(key[0], at), at)
            stream_rows.append((*key, kind, max_seq, watermark(max_seq, hs), records, last_ts, lag_ms, last_at))
            hole_rows.extend((*key, h[0], h[1], h[2]) for h in hs)
        cur.executemany(
            "INSERT INTO streams (agent, stream, kind, max_seq, watermark, records, last_ts, last_lag_ms, last_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (agent, stream) DO UPDATE SET "
            "kind = EXCLUDED.kind, max_seq = EXCLUDED.max_seq, watermark = EXCLUDED.watermark, "
            "records = EXCLUDED.records, last_ts = EXCLUDED.last_ts, last_lag_ms = EXCLUDED.last_lag_ms, "
            "last_at = EXCLUDED.last_at", stream_rows)
        cur.execute("DELETE FROM holes WHERE (agent, stream) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                    ([k[0] for k in keys], [k[1] for k in keys]))
        if hole_rows:
            cur.executemany("INSERT INTO holes (agent, stream, first_seq, last_seq, opened) "
                            "VALUES (%s, %s, %s, %s, %s)", hole_rows)
        if seen:
            cur.executemany("INSERT INTO agents (agent, last_seen) VALUES (%s, %s) ON CONFLICT (agent) DO UPDATE "
                            "SET last_seen = greatest(agents.last_seen, EXCLUDED.last_seen)",
                            sorted(seen.items()))
    conn.commit()
    return True


def _age(t: datetime | None, now: datetime) -> str:
    if t is None:
        return "-"
    s = (now - t).total_seconds()
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def gaps_report(conn: Any, agent: str | None = None, open_only: bool = False) -> tuple[list[str], int]:
    """Lines for `edge-agent fleet gaps`, and the number of missing seqs nothing explains."""
    fold(conn, wait=True)
    where, params = ("WHERE agent = %s", (agent,)) if agent else ("", ())
    with conn.cursor() as cur:
        cur.execute("SELECT now()")
        now = cur.fetchone()[0]
        cur.execute(f"SELECT agent, stream, first_seq, last_seq, opened FROM holes {where} "
                    "ORDER BY agent, stream, first_seq", params)
        holes = cur.fetchall()
        explained = []
        if not open_only:
            cur.execute(f"SELECT agent, stream, first_seq, last_seq, reason, event_seq, ts FROM gaps {where} "
                        "ORDER BY agent, stream, first_seq", params)
            explained = cur.fetchall()
    conn.commit()
    lines = []
    unexplained = 0
    for a, s, f, last, opened in holes:
        unexplained += last - f + 1
        lines.append(f"{a}  {s}  seq {f}-{last} ({last - f + 1})  missing, no gap event (open for {_age(opened, now)}: "
                     f"still in transit, or lost)")
    for a, s, f, last, reason, eseq, ts in explained:
        lines.append(f"{a}  {s}  seq {f}-{last} ({last - f + 1})  dropped by the agent: {reason or 'no reason given'} "
                     f"(gap event outbox seq {eseq}, {ts:%Y-%m-%d %H:%M:%S}Z)")
    return lines, unexplained
