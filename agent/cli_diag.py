"""Field diagnostics: `doctor`, `status`, `capture`, `buffer stats|export|purge`, `tail`; and `install`/`uninstall`.

For the technician with a laptop and an SSH session: each command answers one question in a minute, prints one
line per finding with a fix hint, and exits non-zero when something is wrong. They read the running service through
its status socket (`agent.service`) or, when it is not running, the outbox database directly; they never write to
the outbox while the service runs.

Exit codes: 0 ok, 1 a check failed or a runtime error, 2 usage or configuration error, 3 (`status`) the service is
not running (the outbox was read instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.errors import ConfigError
from agent.outbox import seq_ranges

SYSTEM_STATE_DIR = Path("/var/lib/edge-agent")
DB_NAME = "outbox.db"
GAP_STREAM = "outbox"


class DiagError(Exception):
    """A diagnostic cannot run; the message says why and what to do. Exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- shared helpers -------------------------------------------------------------------------------------------------

def _config(args: argparse.Namespace, *, required: bool = False) -> Config | None:
    """The configuration the service uses (--config, else /etc/edge-agent/agent.toml, else the built-in demo)."""
    from agent.cli_core import load_config
    try:
        return load_config(getattr(args, "config", None), getattr(args, "emulate", False), quiet=True)
    except ConfigError as e:
        if required:
            raise DiagError("invalid configuration:\n  " + "\n  ".join(e.problems), 2) from None
        return None


def state_dir_for(args: argparse.Namespace, config: Config | None) -> Path:
    """--state-dir, else the config's agent.state_dir, else $STATE_DIRECTORY, else the system service's
    /var/lib/edge-agent when it holds an outbox, else ${XDG_STATE_HOME:-~/.local/state}/edge-agent."""
    if getattr(args, "state_dir", None):
        return Path(args.state_dir).expanduser()
    if config is not None and config.agent.state_dir is not None:
        return config.agent.state_dir
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if (SYSTEM_STATE_DIR / DB_NAME).exists():
        return SYSTEM_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "edge-agent"


def find_service(args: argparse.Namespace, state_dir: Path | None) -> tuple[Path | None, dict[str, Any] | None]:
    """The status socket of a running agent and its document, or (None, None)."""
    from agent.service import read_status, status_socket_candidates
    candidates = [Path(args.socket)] if getattr(args, "socket", None) else status_socket_candidates(state_dir)
    for path in candidates:
        try:
            return path, read_status(path)
        except FileNotFoundError:
            continue
        except PermissionError:
            raise DiagError(f"{path}: permission denied; run as the service user, root, or a member of the "
                            f"edge-agent group (sudo usermod -aG edge-agent $USER, then log in again)") from None
        except (OSError, ValueError):
            continue  # a stale socket of an agent that was killed
    return None, None


def open_outbox(state_dir: Path) -> sqlite3.Connection:
    """A read-only connection to the outbox (WAL readers do not block the writer)."""
    path = state_dir / DB_NAME
    if not path.exists():
        raise DiagError(f"no outbox at {path} (is this the right state directory? use --state-dir or --config)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0, isolation_level=None)
        conn.execute("SELECT 1 FROM records LIMIT 1").fetchall()
        return conn
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            raise DiagError(f"{path} is not an edge-agent outbox ({e})") from None
        try:  # a read-only directory and no -shm file: the database is not being written, read it as it is
            conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True, isolation_level=None)
            conn.execute("SELECT 1 FROM records LIMIT 1").fetchall()
            return conn
        except sqlite3.Error:
            pass
        hint = " (permission: run as root or a member of the edge-agent group)" if not os.access(path, os.R_OK) \
            else ""
        raise DiagError(f"cannot read the outbox {path}: {e}{hint}") from None


def _iso(ts_ns: int | None) -> str | None:
    from agent.records import iso_ts
    return iso_ts(ts_ns) if ts_ns is not None else None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = abs(seconds)
    if s < 60:
        return f"{seconds:.0f} s"
    if s < 3600:
        return f"{seconds / 60:.0f} min"
    if s < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1000  # type: ignore[assignment]
    return str(n)


def _service_running(args: argparse.Namespace, state_dir: Path) -> bool:
    path, doc = find_service(args, state_dir)
    return doc is not None


# -- status ---------------------------------------------------------------------------------------------------------

def offline_status(state_dir: Path, config: Config | None) -> dict[str, Any]:
    """The status document built from the outbox database alone (the service is not running)."""
    from hal.types import now_ns
    conn = open_outbox(state_dir)
    try:
        t = now_ns()
        depth, oldest = conn.execute("SELECT COUNT(*), MIN(ts_ns) FROM records").fetchone()
        heads = {s: (k, n) for s, k, n in conn.execute("SELECT stream, kind, next_seq FROM streams")}
        last: dict[str, dict[str, Any]] = {}
        for stream, kind, ts_ns, quality, payload in conn.execute(
                "SELECT r.stream, r.kind, r.ts_ns, r.quality, r.payload FROM records r "
                "JOIN (SELECT stream, MAX(id) AS id FROM records GROUP BY stream) m ON r.id = m.id"):
            body = json.loads(payload)
            value: dict[str, Any] = {"ts": _iso(ts_ns), "quality": quality}
            if kind == "reading":
                value.update(value=body.get("value"), unit=body.get("unit", ""))
                if body.get("error"):
                    value["error"] = body["error"]
            elif kind == "features":
                value.update(features=body.get("features"), unit=body.get("unit", ""))
            last[stream] = {"kind": kind, "last": value, "age_s": round((t - ts_ns) / 1e9, 1), "rate_hz": None}
        gaps = conn.execute("SELECT COUNT(*), COALESCE(SUM(json_extract(payload, '$.count')), 0) FROM records "
                            "WHERE stream = ? AND kind = 'event'", (GAP_STREAM,)).fetchone()
    finally:
        conn.close()
    from agent.service import expected_rate_hz, sensor_streams
    sensors = []
    claimed: set[str] = set()
    for s in (config.sensors if config else ()):
        names = sensor_streams(s, sorted(set(last) | set(heads)))
        claimed.update(names)
        sensors.append({"name": s.name, "driver": s.driver, "kind": s.kind, "bus": s.bus,
                        "expected_rate_hz": expected_rate_hz(s), "rate_hz": None,
                        "streams": {n: last.get(n, {"kind": heads[n][0], "last": None, "age_s": None,
                                                    "rate_hz": None}) for n in names},
                        "errors": None, "dropped": None})
    return {
        "source": "outbox",
        "agent": config.agent.id if config else None,
        "config": {"path": config.source, "digest": config.digest} if config else None,
        "state_dir": str(state_dir),
        "link": {"state": "unknown (the service is not running)"},
        "outbox": {"path": str(state_dir / DB_NAME), "depth": int(depth), "oldest_ts": _iso(oldest),
                   "oldest_age_s": round((t - oldest) / 1e9, 1) if oldest is not None else None,
                   "bytes": sum(p.stat().st_size for p in state_dir.glob(DB_NAME + "*") if p.is_file())},
        "sensors": sensors,
        "other_streams": {n: v for n, v in last.items() if n not in claimed},
        "streams": {s: {"kind": k, "next_seq": n} for s, (k, n) in sorted(heads.items())},
        "gaps": {"outbox_gap_events_unsent": int(gaps[0]), "outbox_records_dropped_unsent": int(gaps[1])},
    }


def _last_text(entry: dict[str, Any] | None) -> tuple[str, str]:
    """(value, quality) of a stream's last record, short enough for a table cell."""
    if not entry or not entry.get("last"):
        return "-", "-"
    last = entry["last"]
    quality = last.get("quality", "-")
    if "value" in last:
        v = last["value"]
        text = "null" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        text += f" {last.get('unit', '')}".rstrip()
        if last.get("error"):
            text += f" ({last['error']})"
        return text, quality
    if isinstance(last.get("features"), dict):
        parts = []
        for axis, feats in last["features"].items():
            if isinstance(feats, dict) and "rms" in feats and isinstance(feats["rms"], (int, float)):
                parts.append(f"{axis} {feats['rms']:.3g}")
        text = ("rms " + " ".join(parts[:3])) if parts else "features"
        return text + f" {last.get('unit', '')}".rstrip(), quality
    return "…", quality


def render_status(doc: dict[str, Any]) -> Any:
    """A rich renderable for a status document (service or outbox)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    lines: list[Any] = []
    running = doc.get("source") == "service"
    head = Text()
    head.append(f"edge-agent {doc.get('agent') or '?'}", style="bold")
    if running:
        head.append(f"  running {_age(doc.get('uptime_s'))} (since {doc.get('started')}), pid {doc.get('pid')}, "
                    f"version {doc.get('version')}")
    else:
        head.append("  NOT RUNNING", style="bold red")
        head.append(" (read from the outbox database)")
    lines.append(head)
    cfg = doc.get("config") or {}
    if cfg:
        lines.append(Text(f"config {cfg.get('path')} (sha256 {cfg.get('digest')}), state {doc.get('state_dir')}"))
    link = doc.get("link") or {}
    lt = Text("link    ")
    state = str(link.get("state"))
    lt.append(state, style="green" if state == "up" else ("red" if state == "down" else "yellow"))
    if running:
        lt.append(f"  {link.get('broker')}  connects {link.get('connects')}, disconnects {link.get('disconnects')}, "
                  f"in flight {link.get('inflight')}, published {link.get('published')}")
        if state != "up" and link.get("last_error"):
            lt.append(f"  last error: {link['last_error']}", style="red")
    lines.append(lt)
    ob = doc.get("outbox") or {}
    ot = Text(f"outbox  {ob.get('depth')} records, oldest {_age(ob.get('oldest_age_s'))} old, "
              f"{_bytes(ob.get('bytes'))}")
    if ob.get("fault"):
        ot.append(f"  FAULT: {ob['fault']}", style="bold red")
    lines.append(ot)
    if doc.get("stalled"):
        lines.append(Text(f"STALLED: {', '.join(doc['stalled'])} (no progress for more than "
                          f"{(doc.get('watchdog') or {}).get('stall_limit_s')} s)", style="bold red"))

    table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 1), collapse_padding=True)
    table.add_column("sensor", no_wrap=True, overflow="ellipsis", max_width=22, min_width=8)
    table.add_column("last value", no_wrap=True, overflow="ellipsis", max_width=30, min_width=10)
    for col, width in (("quality", 7), ("age", 5), ("rate/exp", 9), ("err/drop", 8)):
        table.add_column(col, justify="left" if col == "quality" else "right", no_wrap=True, min_width=width)
    for s in doc.get("sensors") or []:
        streams = s.get("streams") or {}
        rows = list(streams.items()) or [(s["name"], None)]
        for i, (name, entry) in enumerate(rows):
            value, quality = _last_text(entry)
            label = s["name"] if i == 0 else f"  {name}"
            if i == 0 and name != s["name"]:
                label = f"{s['name']} ({name})"
            rate = s.get("rate_hz") if i == 0 else (entry or {}).get("rate_hz")
            expected = s.get("expected_rate_hz") if i == 0 else None
            if i == 0 and s.get("acquisition_hz") is not None:  # what the reader acquires, when it counts it
                rate, expected = s["acquisition_hz"], s.get("expected_acquisition_hz")
            rate_text = ("-" if rate is None else f"{rate:.3g}") + ("" if expected is None else f"/{expected:.3g}")
            table.add_row(label, value,
                          Text(quality, style={"good": "green", "bad": "red", "uncertain": "yellow"}.get(quality, "")),
                          _age((entry or {}).get("age_s")), rate_text,
                          "" if i or s.get("errors") is None else f"{s['errors']}/{s.get('dropped') or 0}")
    lines.append(table)
    drops = doc.get("drops") or {}
    gaps = doc.get("gaps") or {}
    lost = (gaps.get("samples_lost") or {})
    summary = []
    if drops:
        summary.append("drops: " + ", ".join(f"{k} {v}" for k, v in drops.items()))
    if lost:
        summary.append("samples lost before windows: " + ", ".join(f"{k} {v}" for k, v in lost.items()))
    for key in ("outbox_gap_events", "outbox_gap_events_unsent"):
        if gaps.get(key):
            summary.append(f"outbox gap events: {gaps[key]}")
    lines.append(Text("; ".join(summary) if summary else "no drops, no gaps",
                      style="yellow" if summary else "green"))
    for s in doc.get("sensors") or []:  # stream readers: how close they came to losing samples
        r = s.get("reader") or {}
        if r.get("worst_drain_ms") is not None and r.get("slack_ms"):
            late = r["worst_drain_ms"] > r["slack_ms"]
            lines.append(Text(f"reader {s['name']}: worst drain interval {r['worst_drain_ms']:.1f} ms of "
                              f"{r['slack_ms']:.0f} ms FIFO slack ({r.get('scheduling') or 'default'})",
                              style="yellow" if late else ""))
    return Group(*lines)


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    config = _config(args)
    state_dir = state_dir_for(args, config)

    def fetch() -> tuple[dict[str, Any], int]:
        _, doc = find_service(args, state_dir)
        if doc is not None:
            return doc, 0
        return offline_status(state_dir, config), 3

    console = Console()
    if args.watch:
        from rich.live import Live
        try:
            doc, code = fetch()
            with Live(render_status(doc), console=console, refresh_per_second=4, screen=False) as live:
                while True:
                    time.sleep(args.interval)
                    try:
                        doc, code = fetch()
                        live.update(render_status(doc))
                    except DiagError as e:
                        live.update(f"[red]{e}[/red]")
        except KeyboardInterrupt:
            return 0
    doc, code = fetch()
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        console.print(render_status(doc))
    return code


# -- buffer ---------------------------------------------------------------------------------------------------------

def cmd_buffer_stats(args: argparse.Namespace) -> int:
    config = _config(args)
    state_dir = state_dir_for(args, config)
    from hal.types import now_ns
    conn = open_outbox(state_dir)
    try:
        t = now_ns()
        rows = conn.execute("SELECT stream, kind, COUNT(*), MIN(seq), MAX(seq), MIN(ts_ns), MAX(ts_ns), "
                            "SUM(LENGTH(payload)) FROM records GROUP BY stream, kind ORDER BY stream").fetchall()
        heads = dict(conn.execute("SELECT stream, next_seq FROM streams").fetchall())
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()
    total = sum(r[2] for r in rows)
    files = {p.name: p.stat().st_size for p in sorted(state_dir.glob(DB_NAME + "*")) if p.is_file()}
    doc = {
        "path": str(state_dir / DB_NAME), "records": total, "file_bytes": files,
        "used_bytes": page_size * (pages - free), "free_pages": free,
        "max_mb": config.outbox.max_mb if config else None, "policy": config.outbox.policy if config else None,
        "schema_version": meta.get("schema_version"), "created": _iso(int(meta["created_ns"]))
        if meta.get("created_ns", "").isdigit() else None,
        "streams": [{"stream": r[0], "kind": r[1], "records": r[2], "first_seq": r[3], "last_seq": r[4],
                     "next_seq": heads.get(r[0]), "oldest": _iso(r[5]), "newest": _iso(r[6]),
                     "oldest_age_s": round((t - r[5]) / 1e9, 1), "payload_bytes": r[7]} for r in rows],
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    console = Console()
    bound = f" of {doc['max_mb']:g} MB ({doc['policy']})" if doc["max_mb"] else ""
    console.print(f"outbox {doc['path']}: {total} records, {_bytes(doc['used_bytes'])} used{bound}; files "
                  + ", ".join(f"{k} {_bytes(v)}" for k, v in files.items()))
    if not rows:
        console.print("empty: everything was published (or nothing was recorded yet)")
        return 0
    table = Table(box=None, header_style="bold")
    table.add_column("stream", no_wrap=True, overflow="ellipsis", max_width=30)
    for col in ("kind", "records", "seq range", "next seq", "oldest", "payload"):
        table.add_column(col, no_wrap=True, justify="left" if col == "kind" else "right")
    for s in doc["streams"]:
        table.add_row(s["stream"], s["kind"], str(s["records"]), f"{s['first_seq']}…{s['last_seq']}",
                      str(s["next_seq"]), _age(s["oldest_age_s"]), _bytes(s["payload_bytes"]))
    console.print(table)
    return 0


def _select(conn: sqlite3.Connection, streams: list[str] | None, after_id: int = 0, limit: int = 1000,
            before_ns: int | None = None) -> list[tuple[Any, ...]]:
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
    return conn.execute(sql, params).fetchall()


def _wire(row: tuple[Any, ...], agent_id: str | None) -> dict[str, Any]:
    """A stored record as the JSON body the uplink publishes (plus `kind`)."""
    rid, stream, seq, ts_ns, kind, quality, payload = row
    body: dict[str, Any] = {"agent": agent_id, "stream": stream, "seq": seq, "ts": _iso(ts_ns), "quality": quality,
                            "kind": kind}
    body.update(json.loads(payload))
    return body


def cmd_buffer_export(args: argparse.Namespace) -> int:
    config = _config(args)
    state_dir = state_dir_for(args, config)
    conn = open_outbox(state_dir)
    agent_id = config.agent.id if config else None
    out = sys.stdout if args.out in (None, "-") else None
    try:
        fh = out or open(args.out, "w", encoding="utf-8")
    except OSError as e:
        raise DiagError(f"cannot write {args.out}: {e.strerror or e}") from None
    n = 0
    try:
        cursor = 0
        while True:
            rows = _select(conn, args.stream, cursor, 2000)
            if not rows:
                break
            for row in rows:
                fh.write(json.dumps(_wire(row, agent_id), separators=(",", ":")) + "\n")
                n += 1
                if args.limit and n >= args.limit:
                    break
            cursor = rows[-1][0]
            if args.limit and n >= args.limit:
                break
    finally:
        conn.close()
        if out is None:
            fh.close()
    if out is None:
        print(f"exported {n} records to {args.out} (JSON lines; the outbox is unchanged)", file=sys.stderr)
    return 0


def _parse_before(args: argparse.Namespace) -> int | None:
    from hal.types import now_ns
    if args.older_than is not None:
        if args.older_than < 0:
            raise DiagError(f"--older-than: expected a number of seconds >= 0, got {args.older_than:g}", 2)
        return now_ns() - int(args.older_than * 1e9)
    return None


def purge(state_dir: Path, streams: list[str] | None, before_ns: int | None) -> dict[str, list[int]]:
    """Delete records (all, of some streams, or older than a time) and record every deleted range as a `gap`
    event on stream `outbox`, exactly as the outbox does when it drops records, so consumers see the hole.
    Returns {stream: [deleted seqs]}. The service must not be running."""
    from agent.config import OutboxConfig
    from agent.errors import OutboxError
    from agent.outbox import Outbox
    path = state_dir / DB_NAME
    if not path.exists():
        raise DiagError(f"no outbox at {path}")
    outbox = Outbox(state_dir, OutboxConfig())  # the outbox itself deletes and writes the gap events
    try:
        outbox.open()
        return outbox.purge(streams, before_ns)
    except OutboxError as e:
        raise DiagError(str(e)) from None
    finally:
        outbox.stop()


def cmd_buffer_purge(args: argparse.Namespace) -> int:
    if not (args.all or args.stream or args.older_than is not None):
        raise DiagError("say what to purge: --all, --stream NAME (repeatable) and/or --older-than SECONDS", 2)
    config = _config(args)
    state_dir = state_dir_for(args, config)
    if _service_running(args, state_dir):
        raise DiagError("the service is running and owns the outbox: stop it first "
                        "(sudo systemctl stop edge-agent), purge, then start it again")
    before = _parse_before(args)
    conn = open_outbox(state_dir)
    try:
        sql = "SELECT COUNT(*) FROM records WHERE stream != ?"
        params: list[Any] = [GAP_STREAM]
        if args.stream:
            sql += f" AND stream IN ({','.join('?' * len(args.stream))})"
            params += args.stream
        if before is not None:
            sql += " AND ts_ns < ?"
            params.append(before)
        n = conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()
    if n == 0:
        print("nothing to purge")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise DiagError(f"would delete {n} unsent records; add --yes to confirm", 2)
        answer = input(f"delete {n} unsent records from {state_dir / DB_NAME}? they will never be published "
                       "(a gap event says which) [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    dropped = purge(state_dir, args.stream, before)
    for stream, seqs in sorted(dropped.items()):
        print(f"purged {len(seqs)} records of {stream} (seq {', '.join(f'{a}-{b}' for a, b in seq_ranges(seqs))}); "
              "a gap event on stream outbox records it")
    return 0


# -- tail -----------------------------------------------------------------------------------------------------------

def follow(conn: sqlite3.Connection, streams: list[str] | None, last: int, poll_s: float = 0.1,
           stop: Any = None) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    """Yield (record, None) as records are committed, oldest first; (None, note) when records of a stream were
    published and deleted before we saw them (their seqs are skipped)."""
    max_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()[0]
    cursor = 0
    if last >= 0:
        rows = conn.execute("SELECT id FROM records WHERE id <= ?" + (
            f" AND stream IN ({','.join('?' * len(streams))})" if streams else "") + " ORDER BY id DESC LIMIT ?",
                            [max_id, *(streams or []), last]).fetchall() if last else []
        cursor = (rows[-1][0] - 1) if rows else max_id
    seen: dict[str, int] = {}
    while stop is None or not stop():
        rows = _select(conn, streams, cursor, 500)
        for row in rows:
            cursor = row[0]
            stream, seq = row[1], row[2]
            prev = seen.get(stream)
            if prev is not None and seq > prev + 1:
                yield None, (f"{stream}: seq {prev + 1}-{seq - 1} were published and deleted before tail saw "
                             "them")
            seen[stream] = seq
            yield _wire(row, None), None
        if not rows:
            time.sleep(poll_s)


def cmd_tail(args: argparse.Namespace) -> int:
    config = _config(args)
    state_dir = state_dir_for(args, config)
    conn = open_outbox(state_dir)
    agent_id = config.agent.id if config else None
    count = 0
    try:
        stop = (lambda: count >= args.count) if args.count else None
        for rec, note in follow(conn, args.stream, args.lines, stop=stop):
            if rec is None:
                print(f"# {note}", file=sys.stderr, flush=True)
                continue
            rec["agent"] = agent_id
            if args.json:
                print(json.dumps(rec, separators=(",", ":")), flush=True)
            else:
                extra = {k: v for k, v in rec.items() if k not in ("agent", "stream", "seq", "ts", "quality", "kind")}
                print(f"{rec['ts']} {rec['kind']:<8} {rec['stream']}#{rec['seq']} {rec['quality']:<9} "
                      f"{json.dumps(extra, separators=(',', ':'))[:200]}", flush=True)
            count += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        pass
    finally:
        conn.close()
    return 0


# -- install / uninstall --------------------------------------------------------------------------------------------

def _script(name: str) -> Path:
    """systemd/<name> of the source tree this package runs from (a clone, installed editable)."""
    here = Path(__file__).resolve().parent.parent
    script = here / "systemd" / name
    if not script.is_file():
        raise DiagError(f"{name} not found next to this installation ({script}): edge-agent was installed from a "
                        f"package, not a clone; run systemd/{name} from a clone of the repository instead")
    return script


def cmd_install(args: argparse.Namespace) -> int:
    import subprocess
    script = _script("install.sh")
    argv = ["bash", str(script), "--source", str(script.parent.parent)]
    if args.root:
        argv += ["--root", args.root]
    if args.admin:
        argv += ["--admin", args.admin]
    if args.no_start:
        argv.append("--no-start")
    if args.skip_venv:
        argv.append("--skip-venv")
    return subprocess.run(argv).returncode


def cmd_uninstall(args: argparse.Namespace) -> int:
    import subprocess
    argv = ["bash", str(_script("uninstall.sh"))]
    if args.root:
        argv += ["--root", args.root]
    if args.purge:
        argv.append("--purge")
    if args.yes:
        argv.append("--yes")
    return subprocess.run(argv).returncode


# -- registration ---------------------------------------------------------------------------------------------------

def _with_errors(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except DiagError as e:
            print(f"edge-agent {args.command}: {e}", file=sys.stderr)
            return e.code
        except BrokenPipeError:  # `edge-agent doctor | head`: the reader left, nothing is wrong
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    return run


def _common(p: argparse.ArgumentParser, socket: bool = False) -> None:
    from agent.cli_core import add_config_args
    add_config_args(p)
    p.add_argument("--state-dir", metavar="DIR",
                   help="the agent's state directory (default: as the service: the config's agent.state_dir, "
                        "$STATE_DIRECTORY, /var/lib/edge-agent, ~/.local/state/edge-agent)")
    if socket:
        p.add_argument("--socket", metavar="PATH",
                       help="the running agent's status socket (default: $RUNTIME_DIRECTORY/status.sock, "
                            "/run/edge-agent/status.sock, <state dir>/status.sock)")


def register(sub: argparse._SubParsersAction) -> None:
    from agent.cli_diag_doctor import register_doctor
    register_doctor(sub, _common, _with_errors)

    st = sub.add_parser("status", help="what the running agent is doing (or the outbox, if it is not running)",
                        description="Uptime, per sensor the last value, quality and actual rate, outbox depth and "
                                    "oldest record, link state, drops and gaps. Reads the running service's status "
                                    "socket; if the service is not running, the outbox database (exit code 3).")
    _common(st, socket=True)
    st.add_argument("--json", action="store_true", help="print the status document as JSON")
    st.add_argument("--watch", "-w", action="store_true", help="refresh like top until Ctrl-C")
    st.add_argument("--interval", type=float, default=2.0, metavar="S", help="refresh interval for --watch")
    st.set_defaults(func=_with_errors(cmd_status))

    from agent.cli_diag_capture import register_capture
    register_capture(sub, _common, _with_errors)

    buf = sub.add_parser("buffer", help="inspect, export or purge the outbox",
                         description="The outbox holds every record not yet acknowledged by the broker.")
    bsub = buf.add_subparsers(dest="buffer_command", metavar="ACTION")
    stats = bsub.add_parser("stats", help="records per stream, seq ranges, ages and sizes")
    _common(stats, socket=True)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=_with_errors(cmd_buffer_stats))
    export = bsub.add_parser("export", help="write unsent records as JSON lines (the outbox is unchanged)")
    _common(export, socket=True)
    export.add_argument("--out", "-o", metavar="FILE", help="output file (default: standard output)")
    export.add_argument("--stream", action="append", metavar="NAME", help="only this stream (repeatable)")
    export.add_argument("--limit", type=int, default=0, metavar="N", help="at most N records")
    export.set_defaults(func=_with_errors(cmd_buffer_export))
    pg = bsub.add_parser("purge", help="delete unsent records (the service must be stopped); a gap event "
                                       "records what was deleted")
    _common(pg, socket=True)
    pg.add_argument("--all", action="store_true", help="every unsent record")
    pg.add_argument("--stream", action="append", metavar="NAME", help="only this stream (repeatable)")
    pg.add_argument("--older-than", type=float, metavar="S", help="only records older than S seconds")
    pg.add_argument("--yes", "-y", action="store_true", help="do not ask")
    pg.set_defaults(func=_with_errors(cmd_buffer_purge))
    buf.set_defaults(func=lambda a: (buf.print_help(), 2)[1])

    tail = sub.add_parser("tail", help="follow records as they are committed to the outbox",
                          description="Prints records as the agent commits them (before they are published). "
                                      "Records published and deleted between two polls are reported as skipped.")
    _common(tail)
    tail.add_argument("--stream", action="append", metavar="NAME", help="only this stream (repeatable)")
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                      help="start with the last N records (default 10; 0: only new ones)")
    tail.add_argument("--count", type=int, default=0, metavar="N", help="exit after N records")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(func=_with_errors(cmd_tail))

    ins = sub.add_parser("install", help="install as a systemd service (sudo; runs systemd/install.sh)",
                         description="One step: the edge-agent user, a venv under /opt/edge-agent, the directories, "
                                     "a starter config, a warm Numba cache, the unit enabled and started. "
                                     "Idempotent; keeps an existing config and the outbox.")
    ins.add_argument("--no-start", action="store_true", help="do not enable or start the service")
    ins.add_argument("--admin", metavar="USER", help="add USER to the edge-agent group (default: $SUDO_USER)")
    ins.add_argument("--root", metavar="DIR", help="stage into DIR instead of / (privileged steps only printed)")
    ins.add_argument("--skip-venv", action="store_true", help="files only: no venv, no warm-up")
    ins.set_defaults(func=_with_errors(cmd_install))
    un = sub.add_parser("uninstall", help="remove the service; keeps config and outbox unless --purge",
                        description="Stops and disables the service, removes the unit and /opt/edge-agent. Keeps "
                                    "/etc/edge-agent, the outbox in /var/lib/edge-agent, the cache and the user "
                                    "unless --purge.")
    un.add_argument("--purge", action="store_true", help="also delete config, outbox (unsent records!), cache, user")
    un.add_argument("--yes", "-y", action="store_true", help="do not ask before --purge")
    un.add_argument("--root", metavar="DIR", help="act on a staged root instead of /")
    un.set_defaults(func=_with_errors(cmd_uninstall))
