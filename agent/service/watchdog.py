"""The agent as a systemd service: readiness, the watchdog decision (ping only while every stage of the pipeline
makes progress), STATUS= lines, acquisition rates and the periodic `health` record.

Owns the decisions; speaks through `agent.service.notify` and serves `agent.service.status_socket`. Must not touch
the pipeline's internals beyond its public attributes (`agent.stats`, `agent.outbox`, `agent.uplink`,
`agent.config`, `agent.readers`); records go through `agent.outbox.put` like any other stage's; the outbox is read
through `agent.outbox.OutboxView`, never by SQL of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.health import HEALTH_STREAM, HealthMonitor, OutboxHead, counters, drops, live_stage_ages
from agent.records import Emit, iso_ts
from agent.service.notify import Notifier, monotonic_usec
from agent.service.status_socket import StatusServer, StatusSocketError
from agent.service.tap import RATE_WINDOW_S, StreamTap
from agent.status import live_document, outbox_wedge
from hal.types import now_ns

log = logging.getLogger("edge_agent.service")

# A stage that waits on purpose (a slow sensor's poll interval, a reader's retry back-off after a fault) is not
# stuck: reader stages get their interval plus the reader's longest back-off on top of the stall limit.
READER_MAX_BACKOFF_S = 60.0


class Service:
    """The agent as a systemd service: readiness, watchdog, status, health. Call from the main thread."""

    def __init__(self, agent: Any, *, status_socket: Path | None = None, health_interval_s: float = 60.0,
                 status_interval_s: float = 10.0, min_stall_s: float = 5.0,
                 reader_grace_s: float = READER_MAX_BACKOFF_S, environ: Mapping[str, str] | None = None) -> None:
        self.agent = agent
        self.notifier = Notifier(environ)
        self.status_socket = Path(status_socket) if status_socket is not None else None
        self.health_interval_s = health_interval_s
        self.status_interval_s = status_interval_s
        wd = self.notifier.watchdog_usec
        # a stage that has not gone round its loop for this long is stuck: half the watchdog, at least 5 s
        self.stall_limit_s = max(wd / 2e6, min_stall_s) if wd else max(10.0, min_stall_s)
        self.reader_grace_s = reader_grace_s
        self.tap = StreamTap()
        self.tap.install(agent.outbox)
        self.health = HealthMonitor(agent)
        self._server: StatusServer | None = None
        self._reader: Any = None
        self._reader_lock = threading.Lock()
        self._next_health = 0.0
        self._last_status = ""
        self._last_status_t = 0.0
        self._stalled: list[str] = []
        self._ready = False
        self.watchdog_pings = 0
        self._acq_history: deque[tuple[float, dict[str, int]]] = deque()
        self._acq_lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------------------------------

    def ready(self) -> None:
        """The pipeline runs: READY=1, serve the status socket, publish the first health record."""
        if self.status_socket is not None:
            server = StatusServer(self.status_socket, self.status_document, {"capture": self.capture})
            try:
                server.start()
            except StatusSocketError as e:
                log.error("%s; `edge-agent status` will read the outbox database instead", e)
            else:
                self._server = server
                log.info("status socket: %s", self.status_socket)
        self._ready = True
        status = self._status_line()
        self._last_status, self._last_status_t = status, time.monotonic()
        self.notifier.send("READY=1", f"STATUS={status}")
        if self.notifier.watchdog_usec:
            log.info("systemd watchdog every %.0f s; a stage without progress for %.0f s stops the pings",
                     self.notifier.watchdog_usec / 1e6, self.stall_limit_s)
        self._emit_health()

    def tick(self) -> None:
        """About once a second: WATCHDOG=1 while every stage makes progress, STATUS= when it changes, health."""
        now = time.monotonic()
        stalled = self.stalled()
        if stalled and stalled != self._stalled:
            log.error("stalled: %s made no progress for more than %.0f s%s", ", ".join(stalled), self.stall_limit_s,
                      "; withholding watchdog pings so systemd restarts the agent" if self.notifier.watchdog_usec
                      else "")
        elif not stalled and self._stalled:
            log.warning("every stage is making progress again")
        self._stalled = stalled
        status = self._status_line()
        lines = []
        if not stalled and self.notifier.watchdog_usec:
            lines.append("WATCHDOG=1")
        if status != self._last_status or now - self._last_status_t >= self.status_interval_s:
            lines.append(f"STATUS={status}")
            self._last_status, self._last_status_t = status, now
        if lines and self.notifier.send(*lines) and lines[0] == "WATCHDOG=1":
            self.watchdog_pings += 1
        self._sample_acquisition(now)
        if now >= self._next_health:
            self._emit_health()

    # -- acquisition rates: from the readers' counters, when the pipeline keeps them --------------------------

    def _sample_acquisition(self, now: float) -> None:
        """Keep a minute of the `samples.<sensor>` / `reads.<sensor>` counters (one snapshot per tick)."""
        snap = {k: v for k, v in counters(self.agent.stats).items()
                if isinstance(v, int) and k.startswith(("samples.", "reads."))}
        with self._acq_lock:
            self._acq_history.append((now, snap))
            while len(self._acq_history) > 2 and now - self._acq_history[1][0] >= RATE_WINDOW_S:
                self._acq_history.popleft()

    def acquisition_rate(self, sensor: Any) -> float | None:
        """Samples/s (stream) or reads/s (slow) over the last minute, None without the reader's counter."""
        key = f"{'samples' if getattr(sensor, 'kind', 'slow') == 'stream' else 'reads'}.{sensor.name}"
        with self._acq_lock:
            if len(self._acq_history) < 2:
                return None
            (t0, c0), (t1, c1) = self._acq_history[0], self._acq_history[-1]
        if key not in c1 or t1 <= t0:
            return None
        return round((c1[key] - c0.get(key, 0)) / (t1 - t0), 3)

    def reloading(self) -> None:
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}",
                           "STATUS=reloading the configuration")

    def reloaded(self, ok: bool, message: str) -> None:
        if ok:
            log.info("configuration reloaded: %s", message)
            status = f"reloaded: {message}; {self._status_line()}"
        else:
            log.error("configuration rejected, keeping the running one: %s", message)
            status = f"reload rejected, running the previous configuration: {message}"
        self._last_status, self._last_status_t = status, time.monotonic()
        self.notifier.send("READY=1", f"STATUS={_one_line(status)}")

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1", "STATUS=stopping: flushing the outbox")
        if self._server is not None:
            self._server.stop()
            self._server = None
        with self._reader_lock:
            if self._reader is not None:
                try:
                    self._reader.close()
                except Exception:
                    pass
                self._reader = None
        self.notifier.close()

    # -- decisions --------------------------------------------------------------------------------------------

    def stalled(self) -> list[str]:
        """Stages without progress for longer than the limit. Stages that wait on purpose get that time on top:
        readers their poll interval and retry back-off, the uplink its reconnect back-off and connect timeout."""
        stats = self.agent.stats
        base = stats.stalled(self.stall_limit_s)
        if not base:
            return []
        allowance: dict[str, float] = {}
        current = {f"reader.{getattr(r.sensor, 'name', '')}" for r in getattr(self.agent, "readers", [])}
        # readers of a configuration replaced by a reload leave their last progress behind: not stuck, gone
        base = [s for s in base if not s.startswith("reader.") or s in current]
        for r in getattr(self.agent, "readers", []):
            sensor = getattr(r, "sensor", None)
            if sensor is not None:
                extra = (getattr(sensor, "interval_s", 0.0) if getattr(sensor, "kind", "slow") == "slow" else 0.0)
                allowance[f"reader.{sensor.name}"] = self.stall_limit_s + extra + self.reader_grace_s
        # the uplink sleeps through its reconnect back-off (up to reconnect_max_s) and blocks in connect (up to
        # connect_timeout_s) while the broker is away: a broker outage is not a stuck agent
        mqtt = self.agent.config.mqtt
        allowance["uplink"] = self.stall_limit_s + float(getattr(mqtt, "reconnect_max_s", 30.0)) + \
            float(getattr(mqtt, "connect_timeout_s", 10.0))
        out = []
        for stage in base:
            if stage in allowance:
                if stage in stats.stalled(allowance[stage]):
                    out.append(stage)
            else:
                out.append(stage)
        return out

    def _status_line(self) -> str:
        agent = self.agent
        depth = int(getattr(agent.outbox, "depth", 0))
        link = counters(agent.stats).get("link", "down")
        broker = agent.config.mqtt.broker.url
        text = f"{len(agent.config.sensors)} sensors; outbox {depth} records; link {link} ({broker})"
        fault = getattr(agent.outbox, "fault", None)
        if fault:
            info = outbox_wedge(agent.outbox)
            text += f"; OUTBOX WEDGED ({str(info.get('fault_cause') or 'error').replace('_', ' ')}): {fault}"
        if self._stalled:
            text = f"STALLED: {', '.join(self._stalled)}; " + text
        return _one_line(text)

    # -- outbox head (a read connection of our own) -----------------------------------------------------------

    def _outbox_head(self) -> OutboxHead:
        depth = int(getattr(self.agent.outbox, "depth", 0))
        oldest = None
        size = None
        with self._reader_lock:
            try:
                if self._reader is None:
                    from agent.outbox import OutboxView
                    self._reader = OutboxView(self.agent.outbox.path)
                oldest = self._reader.first_ts_ns()
            except Exception as e:
                log.debug("reading the outbox head: %s", e)
                self._reader = None
        path = getattr(self.agent.outbox, "path", None)
        if path is not None:
            try:
                size = sum(p.stat().st_size for p in (Path(path), Path(f"{path}-wal")) if p.exists())
            except OSError:
                size = None
        return OutboxHead(depth, oldest, size)

    # -- health -----------------------------------------------------------------------------------------------

    def health_payload(self) -> dict[str, Any]:
        return self.health.sample(self._outbox_head())

    def _emit_health(self) -> None:
        self._next_health = time.monotonic() + self.health_interval_s
        try:
            payload = self.health_payload()
            self.agent.outbox.put(Emit("health", HEALTH_STREAM, now_ns(), payload))
        except Exception:  # self-monitoring must never take the agent down
            log.exception("building the health record failed")

    # -- capture on request (edge-agent capture, while the service owns the hardware) --------------------------

    def capture(self, req: dict[str, Any]) -> dict[str, Any]:
        """`{"cmd": "capture", "sensor": NAME, "seconds": S}` -> the raw window as a `capture` record payload."""
        sensor, seconds = req.get("sensor"), req.get("seconds")
        if not isinstance(sensor, str) or not isinstance(seconds, (int, float)) or isinstance(seconds, bool) \
                or not 0 < seconds <= 60:  # NaN fails the comparison too
            return {"error": "expected {\"sensor\": NAME, \"seconds\": S} with 0 < S <= 60"}
        try:
            emit = self.agent.capture(sensor, float(seconds), timeout_s=seconds * 2 + 10)
        except (ValueError, TimeoutError, RuntimeError) as e:  # RuntimeError: CaptureBusy, "busy: ..."
            return {"error": str(e)}
        return {"capture": emit.payload, "ts": iso_ts(emit.ts_ns), "quality": str(emit.quality)}

    # -- the status document ----------------------------------------------------------------------------------

    def status_document(self) -> dict[str, Any]:
        """The status document (agent.status) of the running service, as the status socket serves it."""
        agent = self.agent
        snap = counters(agent.stats)
        return live_document(
            agent, counters=snap, outbox_head=self._outbox_head(), streams=self.tap.streams(), gaps=self.tap.gaps(),
            acquisition_hz={s.name: self.acquisition_rate(s) for s in agent.config.sensors}, drops=drops(snap),
            stages=live_stage_ages(agent), stalled=self._stalled if self._ready else [],
            watchdog={"enabled": bool(self.notifier.watchdog_usec),
                      "interval_s": self.notifier.watchdog_usec / 1e6 if self.notifier.watchdog_usec else None,
                      "stall_limit_s": self.stall_limit_s})


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


__all__ = ["READER_MAX_BACKOFF_S", "Service"]
