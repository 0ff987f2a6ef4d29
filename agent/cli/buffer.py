"""`edge-agent buffer stats|export|purge` and `edge-agent tail`: the outbox as a technician sees it.

Reads go through `agent.outbox.OutboxView` (read-only; the service may be running); a purge goes through the outbox
itself (`Outbox.purge`, only while the service is stopped), which records every deleted range as a gap event.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.cli.common import (CliError, add_diag_args, age, config_for, iso, open_outbox, service_running, size,
                              state_dir_for, with_errors)
from agent.outbox import DB_NAME, OutboxView, outbox_files, seq_ranges
from agent.records import Record

# -- buffer stats ---------------------------------------------------------------------------------------------------


def cmd_buffer_stats(args: argparse.Namespace) -> int:
    config = config_for(args)
    state_dir = state_dir_for(args, config)
    from hal.types import now_ns
    view = open_outbox(state_dir)
    try:
        t = now_ns()
        rows = view.stream_stats()
        heads = {s: n for s, (_, n) in view.stream_heads().items()}
        page_size, pages, free = view.pages()
        meta = view.meta()
    finally:
        view.close()
    total = sum(r.records for r in rows)
    files = outbox_files(state_dir)
    doc = {
        "path": str(state_dir / DB_NAME), "records": total, "file_bytes": files,
        "used_bytes": page_size * (pages - free), "free_pages": free,
        "max_mb": config.outbox.max_mb if config else None, "policy": config.outbox.policy if config else None,
        "schema_version": meta.get("schema_version"), "created": iso(int(meta["created_ns"]))
        if meta.get("created_ns", "").isdigit() else None,
        "streams": [{"stream": r.stream, "kind": r.kind, "records": r.records, "first_seq": r.first_seq,
                     "last_seq": r.last_seq, "next_seq": heads.get(r.stream), "oldest": iso(r.oldest_ts_ns),
                     "newest": iso(r.newest_ts_ns), "oldest_age_s": round((t - r.oldest_ts_ns) / 1e9, 1),
                     "payload_bytes": r.payload_bytes} for r in rows],
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    console = Console()
    bound = f" of {doc['max_mb']:g} MB ({doc['policy']})" if doc["max_mb"] else ""
    console.print(f"outbox {doc['path']}: {total} records, {size(doc['used_bytes'])} used{bound}; files "
                  + ", ".join(f"{k} {size(v)}" for k, v in files.items()))
    if not rows:
        console.print("empty: everything was published (or nothing was recorded yet)")
        return 0
    table = Table(box=None, header_style="bold")
    table.add_column("stream", no_wrap=True, overflow="ellipsis", max_width=30)
    for col in ("kind", "records", "seq range", "next seq", "oldest", "payload"):
        table.add_column(col, no_wrap=True, justify="left" if col == "kind" else "right")
    for s in doc["streams"]:
        table.add_row(s["stream"], s["kind"], str(s["records"]), f"{s['first_seq']}…{s['last_seq']}",
                      str(s["next_seq"]), age(s["oldest_age_s"]), size(s["payload_bytes"]))
    console.print(table)
    return 0


# -- buffer export --------------------------------------------------------------------------------------------------

def wire(record: Record, agent_id: str | None) -> dict[str, Any]:
    """A stored record as the JSON body the uplink publishes (plus `kind`)."""
    body: dict[str, Any] = {"agent": agent_id, "stream": record.stream, "seq": record.seq, "ts": iso(record.ts_ns),
                            "quality": str(record.quality), "kind": record.kind}
    body.update(record.payload)
    return body


def cmd_buffer_export(args: argparse.Namespace) -> int:
    config = config_for(args)
    state_dir = state_dir_for(args, config)
    view = open_outbox(state_dir)
    agent_id = config.agent.id if config else None
    out = sys.stdout if args.out in (None, "-") else None
    try:
        fh = out or open(args.out, "w", encoding="utf-8")
    except OSError as e:
        view.close()
        raise CliError(f"cannot write {args.out}: {e.strerror or e}") from None
    n = 0
    try:
        cursor = 0
        while True:
            rows = view.select(args.stream, cursor, 2000)
            if not rows:
                break
            for row in rows:
                fh.write(json.dumps(wire(row, agent_id), separators=(",", ":")) + "\n")
                n += 1
                if args.limit and n >= args.limit:
                    break
            cursor = rows[-1].id
            if args.limit and n >= args.limit:
                break
    finally:
        view.close()
        if out is None:
            fh.close()
    if out is None:
        print(f"exported {n} records to {args.out} (JSON lines; the outbox is unchanged)", file=sys.stderr)
    return 0


# -- buffer purge ---------------------------------------------------------------------------------------------------

def _parse_before(args: argparse.Namespace) -> int | None:
    from hal.types import now_ns
    if args.older_than is not None:
        if args.older_than < 0:
            raise CliError(f"--older-than: expected a number of seconds >= 0, got {args.older_than:g}", 2)
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
        raise CliError(f"no outbox at {path}")
    outbox = Outbox(state_dir, OutboxConfig())  # the outbox itself deletes and writes the gap events
    try:
        outbox.open()
        return outbox.purge(streams, before_ns)
    except OutboxError as e:
        raise CliError(str(e)) from None
    finally:
        outbox.stop()


def cmd_buffer_purge(args: argparse.Namespace) -> int:
    if not (args.all or args.stream or args.older_than is not None):
        raise CliError("say what to purge: --all, --stream NAME (repeatable) and/or --older-than SECONDS", 2)
    config = config_for(args)
    state_dir = state_dir_for(args, config)
    if service_running(args, state_dir):
        raise CliError("the service is running and owns the outbox: stop it first "
                       "(sudo systemctl stop edge-agent), purge, then start it again")
    before = _parse_before(args)
    view = open_outbox(state_dir)
    try:
        n = view.count_purgeable(args.stream, before)
    finally:
        view.close()
    if n == 0:
        print("nothing to purge")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"would delete {n} unsent records; add --yes to confirm", 2)
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

def follow(view: OutboxView, streams: list[str] | None, last: int, poll_s: float = 0.1,
           stop: Any = None) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    """Yield (record, None) as records are committed, oldest first, starting with the newest `last` (0: only new
    ones; negative: everything unsent); (None, note) when records of a stream were published and deleted before we
    saw them (their seqs are skipped)."""
    cursor = view.tail_start(streams, last) if last >= 0 else 0
    seen: dict[str, int] = {}
    while stop is None or not stop():
        rows = view.select(streams, cursor, 500)
        for row in rows:
            cursor = row.id
            prev = seen.get(row.stream)
            if prev is not None and row.seq > prev + 1:
                yield None, (f"{row.stream}: seq {prev + 1}-{row.seq - 1} were published and deleted before tail "
                             "saw them")
            seen[row.stream] = row.seq
            yield wire(row, None), None
        if not rows:
            time.sleep(poll_s)


def cmd_tail(args: argparse.Namespace) -> int:
    config = config_for(args)
    state_dir = state_dir_for(args, config)
    view = open_outbox(state_dir)
    agent_id = config.agent.id if config else None
    count = 0
    try:
        stop = (lambda: count >= args.count) if args.count else None
        for rec, note in follow(view, args.stream, args.lines, stop=stop):
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
        view.close()
    return 0


# -- registration ---------------------------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    buf = sub.add_parser("buffer", help="inspect, export or purge the outbox",
                         description="The outbox holds every record not yet acknowledged by the broker.")
    bsub = buf.add_subparsers(dest="buffer_command", metavar="ACTION")
    stats = bsub.add_parser("stats", help="records per stream, seq ranges, ages and sizes")
    add_diag_args(stats, socket=True)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=with_errors(cmd_buffer_stats))
    export = bsub.add_parser("export", help="write unsent records as JSON lines (the outbox is unchanged)")
    add_diag_args(export, socket=True)
    export.add_argument("--out", "-o", metavar="FILE", help="output file (default: standard output)")
    export.add_argument("--stream", action="append", metavar="NAME", help="only this stream (repeatable)")
    export.add_argument("--limit", type=int, default=0, metavar="N", help="at most N records")
    export.set_defaults(func=with_errors(cmd_buffer_export))
    pg = bsub.add_parser("purge", help="delete unsent records (the service must be stopped); a gap event "
                                       "records what was deleted")
    add_diag_args(pg, socket=True)
    pg.add_argument("--all", action="store_true", help="every unsent record")
    pg.add_argument("--stream", action="append", metavar="NAME", help="only this stream (repeatable)")
    pg.add_argument("--older-than", type=float, metavar="S", help="only records older than S seconds")
    pg.add_argument("--yes", "-y", action="store_true", help="do not ask")
    pg.set_defaults(func=with_errors(cmd_buffer_purge))
    buf.set_defaults(func=lambda a: (buf.print_help(), 2)[1])

    tail = sub.add_parser("tail", help="follow records as they are committed to the outbox",
                          description="Prints records as the agent commits them (before they are published). "
                                      "Records published and deleted between two polls are reported as skipped.")
    add_diag_args(tail)
    tail.add_argument("--stream", action="append", metavar="NAME", help="only this stream (repeatable)")
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                      help="start with the last N records (default 10; 0: only new ones)")
    tail.add_argument("--count", type=int, default=0, metavar="N", help="exit after N records")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(func=with_errors(cmd_tail))
