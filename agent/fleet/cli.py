"""CLI verbs of the fleet side: `edge-agent ingest`, `edge-agent fleet gaps`, `edge-agent fleet status`.

Owns argument parsing and printing for these verbs; the work is in ingest.py, gaps.py and view.py. psycopg is
imported only when a verb runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any

DB_HELP = "PostgreSQL connection string, e.g. postgresql://ingest@db/edge (default: $EDGE_AGENT_DB)"


def _db(args: argparse.Namespace) -> str:
    dsn = args.db or os.environ.get("EDGE_AGENT_DB", "")
    if not dsn:
        print("edge-agent: expected --db postgresql://... (or EDGE_AGENT_DB), found neither", file=sys.stderr)
        raise SystemExit(2)
    return dsn


def _connect(dsn: str) -> Any:
    from agent.fleet.ingest import ensure_schema, load_psycopg
    psycopg = load_psycopg()
    try:
        conn = psycopg.connect(dsn, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise SystemExit(f"edge-agent: cannot connect to the database: {str(e).strip()}") from None
    conn.autocommit = True
    ensure_schema(conn)
    conn.autocommit = False
    return conn


def cmd_ingest(args: argparse.Namespace) -> int:
    from agent.fleet.ingest import Ingest, load_psycopg
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        load_psycopg()
    except RuntimeError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 2
    password = os.environ.get(args.password_env) if args.password_env else None
    if args.password_env and password is None:
        print(f"edge-agent: --password-env {args.password_env}: expected that environment variable to be set",
              file=sys.stderr)
        return 2
    try:
        ingest = Ingest(args.broker, _db(args), prefix=args.prefix, group=args.group, client_id=args.client_id,
                        batch_max=args.batch, batch_ms=args.batch_ms, receive_max=args.receive_max,
                        username=args.username, password=password, leave=args.leave)
    except ValueError as e:
        print(f"edge-agent: --broker: {e}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: ingest.stop())
    return ingest.run(duration_s=args.duration)


def cmd_gaps(args: argparse.Namespace) -> int:
    from agent.fleet.gaps import gaps_report
    conn = _connect(_db(args))
    lines, unexplained = gaps_report(conn, args.agent, args.open)
    print("\n".join(lines) if lines else "no gaps: every stored stream is contiguous")
    if unexplained:
        print(f"{unexplained} seqs missing without a gap event (in transit, or lost)")
    return 1 if args.check and unexplained else 0


def cmd_status(args: argparse.Namespace) -> int:
    from agent.fleet.view import format_table, status_rows
    conn = _connect(_db(args))
    while True:
        text = format_table(status_rows(conn, args.agent))
        if args.watch:
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            print(time.strftime("%Y-%m-%d %H:%M:%S"), flush=True)
        print(text, flush=True)
        if not args.watch:
            return 0
        time.sleep(args.interval)


def register(sub: Any) -> None:
    p = sub.add_parser("ingest", help="store the fleet's records in PostgreSQL, exactly once (fleet side)",
                       description="Subscribe to <prefix>/+/+/+ (an MQTT 5 shared subscription: run several with "
                                   "the same --group to split the load) and the retained status topics, and store "
                                   "every record once in PostgreSQL. Needs the `fleet` extra (psycopg). "
                                   "See docs/fleet.md.")
    p.add_argument("--broker", default="mqtt://localhost:1883", help="broker URL (default %(default)s)")
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--prefix", default="edge", help="first topic level of the agents (default %(default)s)")
    p.add_argument("--group", default="edge-ingest",
                   help="shared subscription group; '' for a plain subscription (default %(default)s)")
    p.add_argument("--client-id", help="MQTT client id, stable across restarts (the broker keeps this session's "
                                       "messages while it is down); one per process (default edge-ingest-<host>)")
    p.add_argument("--batch", type=int, default=5000, help="records per transaction at most (default %(default)s)")
    p.add_argument("--batch-ms", type=float, default=50.0,
                   help="commit at least this often while messages wait (default %(default)s)")
    p.add_argument("--receive-max", type=int, default=1000,
                   help="unacknowledged messages the broker may send at once (default %(default)s)")
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password-env", help="environment variable holding the MQTT password")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--leave", action="store_true",
                   help="retire this --client-id for good: unsubscribe, store what the broker still holds for it, "
                        "end its session (a member that is simply gone keeps receiving its share until then)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_ingest)

    f = sub.add_parser("fleet", help="the fleet database: status per agent, gaps per stream")
    fs = f.add_subparsers(dest="fleet_command", metavar="VERB", required=True)
    g = fs.add_parser("gaps", help="what is missing per stream, and why")
    g.add_argument("--db", help=DB_HELP)
    g.add_argument("--agent", help="only this agent")
    g.add_argument("--open", action="store_true", help="only holes no gap event explains")
    g.add_argument("--check", action="store_true", help="exit 1 if a hole is not explained")
    g.set_defaults(func=cmd_gaps)
    s = fs.add_parser("status", help="one line per agent: last seen, online/offline, streams, lag, holes, machines")
    s.add_argument("--db", help=DB_HELP)
    s.add_argument("--agent", help="only this agent")
    s.add_argument("--watch", action="store_true", help="refresh until interrupted")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default %(default)s)")
    s.set_defaults(func=cmd_status)
