"""The uplink: the only publisher. Forwards outbox records over MQTT (paho-mqtt 2.x), QoS 1.

One thread owns the paho client and runs its network loop itself, so callbacks run on that thread and need no
locks. A record is published only while a session is up, at most `inflight` at a time, and leaves the outbox
only after its PUBACK (tracked by `mid` in `on_publish`). paho keeps unacknowledged QoS 1 messages across a
reconnect and re-sends them with DUP set, so duplicates are bounded by the in-flight window; after a restart
everything still in the outbox is sent again.

Connection: capped exponential back-off with jitter; a broker that is down is reported once per outage, not per
attempt. A link loss is detected by paho's keep-alive (within two intervals). Each CONNACK publishes the retained
birth on `<prefix>/<agent>/status`; the Last Will sets it to `offline`, and so does a clean stop.

Order and fairness: records are read oldest first. Records already in the outbox when a session starts are the
backlog: they are published marked `"historical": true`, oldest first, sharing the in-flight window with live
records by `live_share`, so live data keeps flowing while a backlog drains.
"""

from __future__ import annotations

import json
import logging
import math
import random
import socket
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent import __version__
from agent.config import Config
from agent.outbox import Outbox, OutboxReader
from agent.records import Record, encode, iso_ts
from agent.stats import Stats
from hal.types import now_ns

log = logging.getLogger("edge_agent.uplink")


class Uplink:
    def __init__(self, config: Config, outbox: Outbox, stats: Stats | None = None, *,
                 live_share: float = 0.5, boot_ns: int | None = None) -> None:
        self.config = config
        self.mqtt = config.mqtt
        self.outbox = outbox
        self.stats = stats or Stats()
        self.live_share = live_share
        self.boot_ns = boot_ns or now_ns()
        self.agent_id = config.agent.id
        self.prefix = self.mqtt.prefix
        self.status_topic = f"{self.prefix}/{self.agent_id}/status"
        self._client = self._make_client()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._drain_deadline: float | None = None
        self._new_data = outbox.subscribe()
        self._reader: OutboxReader | None = None
        self._inflight: dict[int, int] = {}  # mid -> record id
        self._acked_mids: list[int] = []
        self._session_up = False
        self._sock_open = False
        self._cursor = 0  # highest record id handed to paho on the live path
        self._backlog_cursor = 0
        self._backlog_end = 0  # records with id <= this are historical; 0: no backlog
        self._down_reported = False
        self._ever_connected = False
        self._last_error = ""
        self.connected = threading.Event()

    # -- paho ------------------------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client_id = self.mqtt.client_id or f"edge-agent-{self.agent_id}"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                        protocol=mqtt.MQTTv311)
        c.max_inflight_messages_set(self.mqtt.inflight)
        c.max_queued_messages_set(0)
        c.connect_timeout = self.mqtt.connect_timeout_s
        c.will_set(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
        if self.mqtt.broker.tls:
            c.tls_set()
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        return c

    def _status_payload(self, status: str) -> bytes:
        body: dict[str, Any] = {"agent": self.agent_id, "status": status}
        if status == "online":
            body.update({"version": __version__, "config": self.config.digest, "boot": iso_ts(self.boot_ns),
                         "ts": iso_ts(now_ns())})
        return json.dumps(body, separators=(",", ":")).encode()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._last_error = f"broker refused the connection: {reason_code}"
            self.stats.inc("uplink_refused")
            if not self._down_reported:
                log.error("%s (%s); buffering to the outbox and retrying", self._last_error, self.mqtt.broker.url)
                self._down_reported = True
            return
        self._session_up = True
        self.stats.set("link", "up")
        self.stats.inc("uplink_connects")
        client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
        depth = self.outbox.depth
        if self._reader is not None and self._backlog_end == 0:
            end = self._reader.max_id()
            if end > self._cursor:
                self._backlog_cursor = self._cursor
                self._backlog_end = end
                self._cursor = end
        log.info("connected to %s as %s; %d records in the outbox%s", self.mqtt.broker.url, self.agent_id, depth,
                 " (publishing the backlog as historical while live data flows)" if self._backlog_end else "")
        self._down_reported = False
        self._ever_connected = True
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        was_up = self._session_up
        self._session_up = False
        self.connected.clear()
        self.stats.set("link", "down")
        if was_up and self._drain_deadline is None:
            self.stats.inc("uplink_disconnects")
            self._last_error = f"link lost: {reason_code}"
            log.warning("lost the broker at %s (%s); buffering to the outbox and reconnecting", self.mqtt.broker.url,
                        reason_code)
            self._down_reported = True

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._acked_mids.append(mid)

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._reader = self.outbox.reader()
        self._stop.clear()
        self.stats.set("link", "down")
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    def stop(self, drain_s: float = 3.0) -> None:
        """Publish what is committed for up to `drain_s` (if connected), mark offline, disconnect."""
        self._drain_deadline = time.monotonic() + drain_s
        self._new_data.set()
        if self._thread is not None:
            self._thread.join(drain_s + 10.0)
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- the thread -------------------------------------------------------------------------------------------

    def _backoff(self, delay: float) -> float:
        wait = delay * random.uniform(0.5, 1.0)  # "equal jitter": avoids a fleet reconnecting in lockstep
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self._draining_done():
            time.sleep(min(0.05, deadline - time.monotonic()) if deadline > time.monotonic() else 0)
        return min(delay * 2, self.mqtt.reconnect_max_s)

    def _draining_done(self) -> bool:
        """True when a stop was requested and there is nothing more we may publish."""
        if self._drain_deadline is None:
            return False
        if time.monotonic() >= self._drain_deadline or not self._session_up:
            return True
        return not self._inflight and self._fetch_nothing_left()

    def _fetch_nothing_left(self) -> bool:
        assert self._reader is not None
        pending_backlog = self._backlog_end and self._backlog_cursor < self._backlog_end
        return not pending_backlog and not self._reader.fetch(self._cursor, 1) and self.outbox.flush(0.0)

    def _connect_once(self, first: bool) -> None:
        host, port = self.mqtt.broker.host, self.mqtt.broker.port
        if first:
            self._client.connect(host, port, keepalive=self.mqtt.keepalive_s)
        else:
            self._client.reconnect()

    def _run(self) -> None:
        delay = self.mqtt.reconnect_min_s
        first = True
        while True:
            self.stats.progress("uplink")
            if self._draining_done():
                break
            if not self._sock_open:
                try:
                    self._connect_once(first)
                    first = False
                    self._sock_open = True
                except (OSError, socket.timeout, ssl.SSLError, ValueError) as e:
                    self.stats.inc("uplink_connect_failures")
                    self._last_error = f"{type(e).__name__}: {e}"
                    if not self._down_reported:
                        log.warning("no broker at %s (%s): buffering to the outbox at %s; retrying with back-off "
                                    "up to %g s", self.mqtt.broker.url, e, self.outbox.path,
                                    self.mqtt.reconnect_max_s)
                        self._down_reported = True
                    if self._drain_deadline is not None:
                        break
                    delay = self._backoff(delay)
                    continue
            rc = self._client.loop(timeout=0.05)
            self._handle_acks()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._sock_open = False
                if self._session_up:
                    self._on_disconnect(self._client, None, None, mqtt.error_string(rc), None)
                self._session_up = False
                if self._drain_deadline is not None:
                    break
                delay = self._backoff(delay)
                continue
            if self._session_up:
                delay = self.mqtt.reconnect_min_s
                self._pump()
        self._finish()

    def _finish(self) -> None:
        if self._session_up:
            info = self._client.publish(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and not info.is_published():
                if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            self._handle_acks()
            self._client.disconnect()
            self._client.loop(timeout=0.1)
        else:
            try:
                self._client.socket() and self._client.disconnect()
            except Exception:
                pass
        self.stats.set("link", "down")
        self.connected.clear()

    def _handle_acks(self) -> None:
        if not self._acked_mids:
            return
        mids, self._acked_mids = self._acked_mids, []
        ids = [rid for rid in (self._inflight.pop(m, None) for m in mids) if rid is not None]
        if ids:
            self.outbox.ack(ids)
            self.stats.inc("uplink_acked", len(ids))
        self.stats.set("uplink_inflight", len(self._inflight))

    def _publish(self, record: Record, historical: bool) -> bool:
        topic, body = encode(record, self.agent_id, self.prefix, historical=historical)
        info = self._client.publish(topic, body, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.stats.inc("uplink_publish_errors")
            log.error("publish of %s seq %d failed: %s", record.stream, record.seq, mqtt.error_string(info.rc))
            return False
        # NO_CONN: paho keeps the QoS 1 message and sends it on reconnect, so it is in flight all the same
        self._inflight[info.mid] = record.id
        self.stats.inc("uplink_published")
        if historical:
            self.stats.inc("uplink_published_historical")
        return True

    def _pump(self) -> None:
        assert self._reader is not None
        room = self.mqtt.inflight - len(self._inflight)
        if room <= 0:
            return
        backlog = self._backlog_end > 0 and self._backlog_cursor < self._backlog_end
        live_room = max(1, math.ceil(room * self.live_share)) if backlog else room
        if self._new_data.is_set() or backlog or self._cursor_behind:
            self._new_data.clear()
            live = self._reader.fetch(self._cursor, live_room)
            self._cursor_behind = len(live) == live_room
            for r in live:
                if not self._publish(r, False):
                    break
                self._cursor = r.id
            room -= len(live)
        if backlog and room > 0:
            old = [r for r in self._reader.fetch(self._backlog_cursor, room) if r.id <= self._backlog_end]
            for r in old:
                if not self._publish(r, True):
                    break
                self._backlog_cursor = r.id
            if len(old) < room:
                self._backlog_cursor = self._backlog_end
            if self._backlog_cursor >= self._backlog_end:
                log.info("backlog published")
                self._backlog_end = 0
        self.stats.set("uplink_inflight", len(self._inflight))

    _cursor_behind = True

    @property
    def last_error(self) -> str:
        return self._last_error
