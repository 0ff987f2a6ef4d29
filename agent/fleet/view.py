"""`edge-agent fleet status`: one line per agent, read from the fleet database.

Owns the read-only queries of the fleet view (it folds pending arrivals first, see agent/fleet/gaps.py). Must not
write data tables or talk MQTT.
"""

from __future__ import annotations

from typing import Any

from agent.fleet.gaps import _age, fold


def status_rows(conn: Any, agent: str | None = None) -> list[dict[str, Any]]:
    fold(conn, wait=True)
    where, params = ("WHERE a.agent = %s", (agent,)) if agent else ("", ())
    with conn.cursor() as cur:
        cur.execute("SELECT now()")
        now = cur.fetchone()[0]
        cur.execute(f"""
            SELECT a.agent, a.status, a.version, a.last_seen, a.status_at,
                   count(s.stream), coalesce(sum(s.records), 0),
                   (SELECT s2.last_lag_ms FROM streams s2 WHERE s2.agent = a.agent AND s2.last_ts IS NOT NULL
                    ORDER BY s2.last_ts DESC LIMIT 1),
                   (SELECT count(*) FROM holes h WHERE h.agent = a.agent),
                   (SELECT coalesce(sum(h.last_seq - h.first_seq + 1), 0) FROM holes h WHERE h.agent = a.agent)
            FROM agents a LEFT JOIN streams s ON s.agent = a.agent {where}
            GROUP BY a.agent ORDER BY a.agent""", params)
        agents = cur.fetchall()
        cur.execute(f"""
            SELECT DISTINCT ON (agent, stream, event) agent, stream, event, body->>'zone', body->>'state'
            FROM events a {where.replace('a.agent', 'agent')}
            {'AND' if where else 'WHERE'} event IN ('zone', 'state')
            ORDER BY agent, stream, event, seq DESC""", params)
        machines: dict[str, list[str]] = {}
        for a, stream, event, zone, state in cur.fetchall():
            name = stream.removesuffix(".events")
            machines.setdefault(a, []).append(f"{name} zone {zone}" if event == "zone" else f"{name} {state}")
    conn.commit()
    out = []
    for a, status, version, last_seen, _status_at, n_streams, records, lag_ms, n_holes, missing in agents:
        out.append({
            "agent": a, "status": status or "?", "version": version or "", "last_seen": _age(last_seen, now),
            "streams": n_streams, "records": int(records),
            "lag": "-" if lag_ms is None else (f"{lag_ms:.0f} ms" if lag_ms < 10_000 else f"{lag_ms / 1000:.0f} s"),
            "holes": f"{n_holes} ({missing} seqs)" if n_holes else "0",
            "machines": ", ".join(machines.get(a, [])) or "-",
        })
    return out


COLUMNS = [("agent", "AGENT"), ("status", "STATUS"), ("last_seen", "LAST SEEN"), ("streams", "STREAMS"),
           ("records", "RECORDS"), ("lag", "LAG"), ("holes", "OPEN HOLES"), ("machines", "MACHINES")]


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [[h for _, h in COLUMNS]] + [[str(r[k]) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join(c[i].ljust(w) for i, w in enumerate(widths)) + "  " + c[-1] for c in cells]
    if not rows:
        lines.append("(no agents yet: is `edge-agent ingest` running against this database?)")
    return "\n".join(lines)
