"""The status document: what `edge-agent status` prints and the status socket serves, built in one place.

Two sources fill the same shape: the running service (`live_document`, from its stream tap, stats and outbox head;
`source: "service"`) and, when the service is not running, the outbox database alone (`offline_document`, through
`agent.outbox.OutboxView`; `source: "outbox"`). A key the offline view cannot know (a rate, an error count) is None
there, never missing, so a reader handles both the same way.

Owns: the document's keys, how a stream's last record is summarised, which streams belong to which sensor and the
rate a sensor should produce. Must not: open sockets (agent.service), issue SQL (agent.outbox), print (agent.cli).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent import __version__
from agent.records import iso_ts
from hal.types import now_ns


def last_value(kind: str, ts_ns: int, quality: Any, payload: Any) -> dict[str, Any]:
    """A stream's last record, summarised: ts and quality, plus value/unit (readings), features/unit (features) or
    the payload (other kinds)."""
    payload = payload if isinstance(payload, dict) else {}
    out: dict[str, Any] = {"ts": iso_ts(ts_ns), "quality": str(quality)}
    if kind == "reading":
        out["value"] = payload.get("value")
        out["unit"] = payload.get("unit", "")
        if payload.get("error"):
            out["error"] = payload["error"]
    elif kind == "features":
        out["features"] = payload.get("features")
        out["unit"] = payload.get("unit", "")
    else:
        out["payload"] = payload
    return out


def sensor_streams(sensor: Any, streams: list[str]) -> list[str]:
    """The streams a sensor produces: its name, `<name>.<channel>` (Modbus registers), or its `channel` option."""
    name = sensor.name
    channel = (getattr(sensor, "options", None) or {}).get("channel") or ""
    return [s for s in streams if s == name or s.startswith(name + ".") or (channel and s == channel)]


def expected_rate_hz(sensor: Any) -> float | None:
    """Records per second a sensor should produce: 1/interval for slow sensors, rate/hop for stream sensors."""
    if getattr(sensor, "kind", "slow") == "stream":
        rate = (getattr(sensor, "options", None) or {}).get("rate_hz")
        hop = getattr(sensor, "hop", 0)
        return round(float(rate) / hop, 3) if rate and hop else None
    interval = getattr(sensor, "interval_s", 0)
    return round(1.0 / interval, 3) if interval else None


def expected_acquisition_hz(sensor: Any) -> float | None:
    """Samples per second (stream sensors: the configured rate) or reads per second (slow: 1/interval)."""
    if getattr(sensor, "kind", "slow") == "stream":
        rate = (getattr(sensor, "options", None) or {}).get("rate_hz")
        return float(rate) if rate else None
    interval = getattr(sensor, "interval_s", 0)
    return round(1.0 / interval, 3) if interval else None


def _sensor(s: Any, streams: dict[str, Any]) -> dict[str, Any]:
    return {"name": s.name, "driver": s.driver, "kind": s.kind, "bus": s.bus, "expected_rate_hz": expected_rate_hz(s),
            "rate_hz": None, "streams": streams, "errors": None, "dropped": None, "reader": None}


def _outbox(path: Any, depth: int, oldest_ts_ns: int | None, t: int, file_bytes: int | None) -> dict[str, Any]:
    return {"path": str(path), "depth": depth,
            "oldest_ts": iso_ts(oldest_ts_ns) if oldest_ts_ns is not None else None,
            "oldest_age_s": round((t - oldest_ts_ns) / 1e9, 1) if oldest_ts_ns is not None else None,
            "bytes": file_bytes}


def outbox_wedge(outbox: Any) -> dict[str, Any]:
    """Why the outbox cannot commit (cause, since, fix) and what was not committed, for status and doctor."""
    info = outbox.fault_info() if hasattr(outbox, "fault_info") else None
    out: dict[str, Any] = {"wedged": info is not None}
    if info is not None:
        out.update(fault_cause=info["cause"], fix=info["fix"], waiting_in_memory=info["waiting"],
                   fault_since=iso_ts(info["since_ns"]) if info.get("since_ns") else None)
    if hasattr(outbox, "lost_total"):
        out["not_committed"] = int(outbox.lost_total)
    return out


def live_document(agent: Any, *, counters: dict[str, Any], outbox_head: Any, streams: dict[str, dict[str, Any]],
                  gaps: dict[str, Any], acquisition_hz: dict[str, float | None], drops: dict[str, Any],
                  stages: dict[str, Any], stalled: list[str], watchdog: dict[str, Any]) -> dict[str, Any]:
    """The document of the running service. `agent`: the pipeline (config, state_dir, boot_ns, outbox, uplink);
    `counters`: a snapshot of its stats; `outbox_head`: depth, oldest ts, file bytes; `streams` and `gaps`: the
    stream tap's view; `acquisition_hz`: per sensor name, what its reader acquires."""
    cfg = agent.config
    snap = counters
    t = now_ns()
    sensors = []
    claimed: set[str] = set()
    for s in cfg.sensors:
        names = sensor_streams(s, list(streams))
        claimed.update(names)
        entry = _sensor(s, {n: streams[n] for n in names})
        entry.update(rate_hz=round(sum(streams[n]["rate_hz"] for n in names) if names else 0.0, 3),
                     acquisition_hz=acquisition_hz.get(s.name), expected_acquisition_hz=expected_acquisition_hz(s),
                     errors=snap.get(f"reader_errors.{s.name}", 0) + snap.get(f"processing_errors.{s.name}", 0),
                     dropped=snap.get(f"dropped.{s.name}", 0))
        if s.kind == "stream":  # a buffered stream reader: worst drain interval against its FIFO's slack
            entry["reader"] = {"worst_drain_ms": snap.get(f"reader_latency_ms.{s.name}"),
                               "slack_ms": snap.get(f"reader_slack_ms.{s.name}"),
                               "scheduling": snap.get(f"reader_scheduling.{s.name}")}
        sensors.append(entry)
    uplink = agent.uplink
    outbox = _outbox(getattr(agent.outbox, "path", ""), outbox_head.depth, outbox_head.oldest_ts_ns, t,
                     outbox_head.file_bytes)
    outbox["fault"] = getattr(agent.outbox, "fault", None)
    outbox.update(outbox_wedge(agent.outbox))
    return {
        "source": "service",
        "agent": cfg.agent.id,
        "version": __version__,
        "pid": os.getpid(),
        "ts": iso_ts(t),
        "started": iso_ts(agent.boot_ns),
        "uptime_s": round((t - agent.boot_ns) / 1e9, 1),
        "config": {"path": cfg.source, "digest": cfg.digest, "emulate": cfg.emulate},
        "state_dir": str(agent.state_dir),
        "link": {"state": snap.get("link", "down"), "broker": cfg.mqtt.broker.url,
                 "last_error": getattr(uplink, "last_error", ""),
                 "connects": snap.get("uplink_connects", 0), "disconnects": snap.get("uplink_disconnects", 0),
                 "inflight": snap.get("uplink_inflight", 0), "published": snap.get("uplink_published", 0),
                 "acked": snap.get("uplink_acked", 0)},
        "outbox": outbox,
        "sensors": sensors,
        "other_streams": {n: v for n, v in streams.items() if n not in claimed},
        "drops": drops,
        "gaps": {**gaps, "outbox_gap_events": max(gaps["outbox_gap_events"],
                                                  int(snap.get("outbox_gap_events", 0) or 0))},
        "stages": stages,
        "stalled": stalled,
        "watchdog": watchdog,
    }


def offline_document(state_dir: Path, config: Any) -> dict[str, Any]:
    """The document built from the outbox database alone (the service is not running). Raises
    agent.outbox.OutboxUnreadable when there is no readable outbox in `state_dir`."""
    from agent.outbox import DB_NAME, OutboxView, outbox_files
    view = OutboxView.open(state_dir)
    try:
        t = now_ns()
        depth, oldest = view.head()
        heads = view.stream_heads()
        last = {r.stream: {"kind": r.kind, "last": last_value(r.kind, r.ts_ns, r.quality, r.payload),
                           "age_s": round((t - r.ts_ns) / 1e9, 1), "rate_hz": None}
                for r in view.latest_per_stream()}
        gap_events, gap_records = view.gap_summary()
    finally:
        view.close()
    sensors = []
    claimed: set[str] = set()
    for s in (config.sensors if config else ()):
        names = sensor_streams(s, sorted(set(last) | set(heads)))
        claimed.update(names)
        sensors.append(_sensor(s, {n: last.get(n, {"kind": heads[n][0], "last": None, "age_s": None,
                                                   "rate_hz": None}) for n in names}))
    return {
        "source": "outbox",
        "agent": config.agent.id if config else None,
        "config": {"path": config.source, "digest": config.digest} if config else None,
        "state_dir": str(state_dir),
        "link": {"state": "unknown (the service is not running)"},
        "outbox": _outbox(Path(state_dir) / DB_NAME, depth, oldest, t, sum(outbox_files(state_dir).values())),
        "sensors": sensors,
        "other_streams": {n: v for n, v in last.items() if n not in claimed},
        "streams": {s: {"kind": k, "next_seq": n} for s, (k, n) in sorted(heads.items())},
        "gaps": {"outbox_gap_events_unsent": gap_events, "outbox_records_dropped_unsent": gap_records},
    }
