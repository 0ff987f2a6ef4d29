"""`edge-agent status`: what the running agent is doing, or, when it is not running, what its outbox holds.

The document comes from the service's status socket or `agent.status.offline_document`; this module only renders
it (a table, JSON, or a live view with --watch).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from agent.cli.common import CliError, add_diag_args, age, config_for, find_service, size, state_dir_for, with_errors
from agent.config import Config


def _offline(state_dir: Path, config: Config | None) -> dict[str, Any]:
    from agent.outbox import OutboxUnreadable
    from agent.status import offline_document
    try:
        return offline_document(state_dir, config)
    except OutboxUnreadable as e:
        raise CliError(str(e)) from None


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
        head.append(f"  running {age(doc.get('uptime_s'))} (since {doc.get('started')}), pid {doc.get('pid')}, "
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
    ot = Text(f"outbox  {ob.get('depth')} records, oldest {age(ob.get('oldest_age_s'))} old, "
              f"{size(ob.get('bytes'))}")
    if ob.get("fault"):
        cause = str(ob.get("fault_cause") or "error").replace("_", " ")
        ot.append(f"  WEDGED ({cause}): {ob['fault']}", style="bold red")
    lines.append(ot)
    if ob.get("fault"):
        lines.append(Text(f"        new records wait in memory ({ob.get('waiting_in_memory', '?')} now); records the "
                          f"memory queue cannot take are counted as not committed ({ob.get('not_committed', '?')} "
                          f"so far)", style="red"))
        if ob.get("fix"):
            lines.append(Text(f"        fix: {ob['fix']}", style="yellow"))
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
                          age((entry or {}).get("age_s")), rate_text,
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
    config = config_for(args)
    state_dir = state_dir_for(args, config)

    def fetch() -> tuple[dict[str, Any], int]:
        _, doc = find_service(args, state_dir)
        if doc is not None:
            return doc, 0
        return _offline(state_dir, config), 3

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
                    except CliError as e:
                        live.update(f"[red]{e}[/red]")
        except KeyboardInterrupt:
            return 0
    doc, code = fetch()
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        console.print(render_status(doc))
    return code


def register(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("status", help="what the running agent is doing (or the outbox, if it is not running)",
                        description="Uptime, per sensor the last value, quality and actual rate, outbox depth and "
                                    "oldest record, link state, drops and gaps. Reads the running service's status "
                                    "socket; if the service is not running, the outbox database (exit code 3).")
    add_diag_args(st, socket=True)
    st.add_argument("--json", action="store_true", help="print the status document as JSON")
    st.add_argument("--watch", "-w", action="store_true", help="refresh like top until Ctrl-C")
    st.add_argument("--interval", type=float, default=2.0, metavar="S", help="refresh interval for --watch")
    st.set_defaults(func=with_errors(cmd_status))

