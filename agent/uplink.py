"""The uplink: the only publisher. Forwards outbox records over MQTT (paho-mqtt 2.x), QoS 1 (Sparkplug: QoS 0 by
default, see below).

One thread owns the paho client and runs its network loop itself, so callbacks run on that thread and need no
locks. A record is published only while a session is up, at most `inflight` at a time, and leaves the outbox
only after its PUBACK (tracked by `mid` in `on_publish`); a record sent with QoS 0 has no PUBACK, so it leaves
only after the UNSUBACK of an UNSUBSCRIBE sent after it (the broker answers a client's packets in order, so it
has read the record by then). paho keeps unacknowledged QoS 1 messages across a
reconnect and re-sends them with DUP set, so duplicates are bounded by the in-flight window; after a restart
everything still in the outbox is sent again.

The paho client comes from a factory (`client_factory`, default `paho_client`: the real one); the uplink only uses
the calls listed in `MqttClient`, and paho's callbacks (VERSION2 signatures) drive its state machine. The tests of
that state machine (tests/agent/test_uplink_state.py) pass a small recording stand-in and fire the callbacks themselves;
every other uplink test talks to a real Mosquitto broker. `run_once` is one turn of the thread's loop.

Connection: capped exponential back-off with jitter; a broker that is down is reported once per outage, not per
attempt. A link loss is detected by paho's keep-alive (within two intervals). Each CONNACK publishes the retained
birth on `<prefix>/<agent>/status`; the Last Will sets it to `offline`, and so does a clean stop.

Order and fairness: records are read oldest first. Records already in the outbox when a session starts are the
backlog: they are published marked `"historical": true`, oldest first, sharing the in-flight window with live
records by `live_share`, so live data keeps flowing while a backlog drains.

Bytes on the wire (JSON): with `mqtt.group = "sensor"` the readings of one sensor poll (records of kind `reading`
on streams `<sensor>.<key>` with one timestamp) go in one message on `<prefix>/<agent>/readings/<sensor>`
(`agent.records.grouped_body`); the outbox still holds one record per value with its own seq, so acknowledging,
the backlog and gap accounting are unchanged. With `mqtt.compress = "deflate"` a data body of at least
`compress_min_bytes` is sent as a zlib stream when that is smaller (MQTT 5: content type `application/zlib`).
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
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent import __version__
from agent.config import Config, MqttConfig
from agent.outbox import Outbox, OutboxReader
from agent.records import CONTENT_TYPE_DEFLATE, Record, deflate, encode, encode_grouped, groupable, iso_ts
from agent.stats import Stats
from hal.types import now_ns

log = logging.getLogger("edge_agent.uplink")


class MqttClient(Protocol):
    """What the uplink uses of paho's `mqtt.Client` (2.x, CallbackAPIVersion.VERSION2). Its callbacks
    (`on_connect`, `on_disconnect`, `on_publish`, `on_unsubscribe`, `on_message`, `on_subscribe`, and
    `on_socket_open` set by Sparkplug) are assigned by the uplink and called from `loop()`."""

    def connect(self, host: str, port: int = ..., keepalive: int = ...) -> Any: ...
    def reconnect(self) -> Any: ...
    def loop(self, timeout: float = ...) -> MQTTErrorCode: ...
    def socket(self) -> Any: ...
    def disconnect(self) -> Any: ...
    def publish(self, topic: str, payload: bytes = ..., qos: int = ..., retain: bool = ...,
                properties: Any = ...) -> mqtt.MQTTMessageInfo: ...
    def subscribe(self, topic: Any, qos: int = ...) -> tuple[MQTTErrorCode, int | None]: ...
    def unsubscribe(self, topic: str) -> tuple[MQTTErrorCode, int | None]: ...
    def will_set(self, topic: str, payload: bytes = ..., qos: int = ..., retain: bool = ...) -> None: ...


ClientFactory = Callable[[MqttConfig, str], MqttClient]


def paho_client(settings: MqttConfig, client_id: str) -> mqtt.Client:
    """The real client: protocol version, in-flight window, no queue beyond it, connect timeout, TLS and
    credentials from the `mqtt` settings. The uplink assigns the callbacks."""
    if settings.protocol == "5":
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                        protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(settings.inflight)
    c.max_queued_messages_set(0)
    c.connect_timeout = settings.connect_timeout_s
    if settings.broker.tls:
        c.tls_set(ca_certs=settings.ca_file or None, certfile=settings.cert_file or None,
                  keyfile=settings.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
        if settings.tls_insecure:
            c.tls_insecure_set(True)
    if settings.username:
        c.username_pw_set(settings.username, settings.password or None)
    return c


class Uplink:
    def __init__(self, config: Config, outbox: Outbox, stats: Stats | None = None, *,
                 boot_ns: int | None = None, client_factory: ClientFactory = paho_client) -> None:
        self.config = config
        self.mqtt = config.mqtt
        self.outbox = outbox
        self.stats = stats or Stats()
        self.live_share = config.mqtt.live_share
        self.boot_ns = boot_ns or now_ns()
        self.agent_id = config.agent.id
        self.prefix = self.mqtt.prefix
        self.status_topic = f"{self.prefix}/{self.agent_id}/status"
        self._ready = False  # a session is up and the wire format allows data (JSON: at CONNACK)
        self._reconnect_requested = False
        self._reconnect_after: mqtt.MQTTMessageInfo | None = None
        self._client_factory = client_factory
        self.format: WireFormat = self._make_format()
        self._client = self._make_client()
        self._thread: threading.Thread | None = None
        self._drain_deadline: float | None = None
        self._new_data = outbox.subscribe()
        self._reader: OutboxReader | None = None
        self._inflight: dict[int, list[int]] = {}  # mid -> record ids (several when batching)
        self.cmd_topic = f"{self.prefix}/{self.agent_id}/cmd"
        self.response_topic = f"{self.prefix}/{self.agent_id}/cmd-response"
        self.on_command: Callable[[str, bytes], None] | None = None  # set by the agent when commands are enabled
        self.on_write: Callable[[str, Any], None] | None = None  # Sparkplug DCMD writes (target, value), likewise
        self._responses: deque[bytes] = deque()
        self._acked_mids: list[int] = []
        # QoS 0 (Sparkplug's default): paho reports a message "published" once it is written to the socket, which
        # proves nothing if the link is already dead. Such records wait in `_written`; an UNSUBSCRIBE of a filter
        # nobody uses is then sent, and its UNSUBACK (the broker answers in order) confirms that the broker has
        # read every publish before it: only then do the records leave the outbox. A link lost before that sends
        # them again (duplicates, never a silent loss).
        self._qos0_mids: set[int] = set()
        self._written: list[int] = []
        self._written_at = 0.0
        self._confirming: dict[int, list[int]] = {}  # UNSUBSCRIBE mid -> record ids it confirms
        self._unsub_acked: list[int] = []
        self.confirm_topic = getattr(self.format, "confirm_topic", "") or f"{self.prefix}/{self.agent_id}/confirm"
        self._sent_at: dict[int, float] = {}  # mid -> monotonic publish time, for the PUBACK latency
        self._session_up = False
        self._connacked = False  # a CONNACK accepted the current socket (paho's loop() may end the session too)
        self._sock_open = False
        self._cursor = 0  # highest record id handed to paho on the live path
        self._backlog_cursor = 0
        self._backlog_end = 0  # records with id <= this are historical; 0: no backlog
        self._cursor_behind = True  # the last fetch filled the window: more records may be waiting
        self._down_reported = False
        self._last_error = ""
        self._first_connect = True  # connect() the first time (and with a fresh client), reconnect() after
        self.retry_delay_s = self.mqtt.reconnect_min_s  # the next back-off: doubles per failure up to the cap
        self.group = self.mqtt.group == "sensor"
        self._set_sensors(config)
        self._fetch_factor = 16 if self.group else 1  # a poll is ~one record per channel: fetch whole polls

    # -- paho ------------------------------------------------------------------------------------------------

    def _make_client(self) -> MqttClient:
        c = self._client_factory(self.mqtt, self.mqtt.client_id or f"edge-agent-{self.agent_id}")
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_unsubscribe = self._on_unsubscribe
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def _make_format(self) -> "WireFormat":
        if self.mqtt.format == "sparkplug":
            from agent.sparkplug.node import SparkplugFormat
            return SparkplugFormat(self.config, self, state_dir=self.outbox.state_dir, boot_ns=self.boot_ns,
                                   stats=self.stats)
        return JsonFormat(self)

    def status_payload(self, status: str) -> bytes:
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
        self._connacked = True
        self._last_error = ""
        self.stats.set("link", "up")
        self.stats.inc("uplink_connects")
        if self.on_command is not None and self.mqtt.format == "json":
            # subscribe on every connect: a clean session forgets subscriptions (mqtt-io #333)
            client.subscribe(f"{self.cmd_topic}/+", qos=1)
        log.info("connected to %s as %s; %d records in the outbox", self.mqtt.broker.url, self.agent_id,
                 self.outbox.depth)
        self._down_reported = False
        if self.format.on_connect(client):
            self.set_ready(True)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        """A SUBACK: the broker now routes commands to us (tests and diagnostics wait on this counter)."""
        if any(getattr(rc, "is_failure", False) for rc in reason_codes or []):
            self.stats.inc("uplink_subscribe_refused")
            log.error("the broker refused a subscription: %s", ", ".join(str(rc) for rc in reason_codes))
        else:
            self.stats.inc("uplink_subscriptions")

    def set_ready(self, ready: bool) -> None:
        """Data may flow (True) or must wait (False, e.g. Sparkplug's primary host is offline). Records already
        in the outbox when data starts flowing are the backlog: published as historical, beside live data."""
        if ready and not self._ready and self._reader is not None and self._backlog_end == 0:
            end = self._reader.max_id()
            if end > self._cursor:
                self._backlog_cursor = self._cursor
                self._backlog_end = end
                self._cursor = end
                log.info("publishing a backlog of up to %d records as historical while live data flows",
                         end - self._backlog_cursor)
        self._ready = ready

    def reconnect(self, after: mqtt.MQTTMessageInfo | None = None) -> None:
        """Drop the connection with a clean DISCONNECT (the broker then discards the Last Will), once `after` (a
        QoS 1 message just published) is acknowledged; the loop then connects again. Safe in a paho callback."""
        self._reconnect_requested = True
        self._reconnect_after = after

    def _disconnect_cleanly(self) -> None:
        self._reconnect_requested = False
        after, self._reconnect_after = self._reconnect_after, None
        deadline = time.monotonic() + 2.0
        # wait for the broker's PUBACK first: closing a socket with unread data sends a TCP reset, and the broker
        # may then lose our DISCONNECT and publish the Will as well
        while after is not None and not after.is_published() and time.monotonic() < deadline:
            if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        self._session_up = False  # intended: not reported as a lost link
        self._ready = False
        self.stats.set("link", "down")
        self._client.disconnect()  # queued behind what was published before: written in order
        deadline = time.monotonic() + 2.0
        while self._client.socket() is not None and time.monotonic() < deadline:
            if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        self._sock_open = False

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        was_up = self._session_up
        self._session_up = False
        self._ready = False
        self.stats.set("link", "down")
        if was_up and self._drain_deadline is None:
            self.stats.inc("uplink_disconnects")
            reason = str(reason_code)
            if reason == "Unspecified error":
                reason = "connection lost"
            self._last_error = f"link lost: {reason}"
            log.warning("lost the broker at %s (%s); buffering to the outbox and reconnecting", self.mqtt.broker.url,
                        reason)
            self._down_reported = True

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._acked_mids.append(mid)

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                        properties: Any) -> None:
        self._unsub_acked.append(mid)

    def describe(self, config: Config, sources: dict[str, Any]) -> None:
        """The running configuration and its drivers (at start, after a reload), for a format that announces its
        metrics up front (Sparkplug's births). Safe from any thread."""
        self._set_sensors(config)  # mqtt.group: a reload may add sensors
        describe = getattr(self.format, "describe", None)
        if describe is not None:
            describe(config, sources)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.format.on_message(client, msg):
            return
        handler = self.on_command
        if handler is None or not msg.topic.startswith(self.cmd_topic + "/"):
            return
        self.stats.inc("commands_received")
        try:
            handler(msg.topic[len(self.cmd_topic) + 1:], bytes(msg.payload))
        except Exception as e:  # the handler only queues; this is a bug, not a reason to drop the link
            self.stats.inc("commands_errors")
            log.exception("command handler failed: %s", e)

    def respond(self, body: bytes) -> None:
        """Queue a command response; the uplink thread publishes it (QoS 1, not stored: moot after a restart)."""
        self._responses.append(body)

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self, *, thread: bool = True) -> None:
        """Open the outbox reader and start the uplink thread; with `thread=False` the caller turns the loop
        itself with `run_once()` (the state-machine tests, with a stand-in client)."""
        self._reader = self.outbox.reader()
        self.stats.set("link", "down")
        if thread:
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
            self.stats.progress("uplink")  # waiting on purpose is not being stuck
            time.sleep(min(0.05, deadline - time.monotonic()) if deadline > time.monotonic() else 0)
        return min(delay * 2, self.mqtt.reconnect_max_s)

    def _draining_done(self) -> bool:
        """True when a stop was requested and there is nothing more we may publish."""
        if self._drain_deadline is None:
            return False
        if time.monotonic() >= self._drain_deadline or not self._session_up or not self._ready:
            return True
        return not self._inflight and not self._written and not self._confirming and self._fetch_nothing_left()

    def _fetch_nothing_left(self) -> bool:
        assert self._reader is not None
        pending_backlog = self._backlog_end and self._backlog_cursor < self._backlog_end
        return not pending_backlog and not self._reader.fetch(self._cursor, 1) and self.outbox.flush(0.0)

    def _explain(self, e: BaseException) -> str:
        if isinstance(e, ssl.SSLCertVerificationError):
            return (f"TLS certificate verification failed ({e.verify_message}): check mqtt.ca_file and that the "
                    f"broker's certificate is issued for {self.mqtt.broker.host}")
        if isinstance(e, ssl.SSLError):
            return f"TLS handshake failed ({e.reason or e}): check mqtt.ca_file, cert_file and key_file"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused (is the broker running and listening on that port?)"
        if isinstance(e, socket.gaierror):
            return f"cannot resolve the host name {self.mqtt.broker.host!r}"
        if isinstance(e, (TimeoutError, socket.timeout)):
            return f"no answer within {self.mqtt.connect_timeout_s:g} s"
        return f"{type(e).__name__}: {e}"

    def _connect_once(self, first: bool) -> None:
        host, port = self.mqtt.broker.host, self.mqtt.broker.port
        if not first and self.format.fresh_session:
            self._rewind()
            self._client = self._make_client()
            first = True
        self._connacked = False
        self.format.before_connect(self._client)
        if self.mqtt.broker.tls and self.mqtt.tls_insecure:  # at every connect, so it cannot go unnoticed
            log.warning("mqtt.tls_insecure = true: connecting to %s:%d WITHOUT checking the broker's host name "
                        "against its certificate (anyone on the path can impersonate the broker); never in "
                        "production", host, port)
        if first:
            self._client.connect(host, port, keepalive=self.mqtt.keepalive_s)
        else:
            self._client.reconnect()

    def _rewind(self) -> None:
        """Forget what paho held in flight and send it again from the outbox (after the next birth)."""
        ids = [rid for group in self._inflight.values() for rid in group] + self._written
        ids += [rid for group in self._confirming.values() for rid in group]
        self._inflight.clear()
        self._acked_mids.clear()
        self._sent_at.clear()
        self._qos0_mids.clear()
        self._written = []
        self._confirming.clear()
        self._unsub_acked.clear()
        low = min(ids) - 1 if ids else self._cursor
        if self._backlog_end and self._backlog_cursor < self._backlog_end:
            low = min(low, self._backlog_cursor)
        self._cursor = min(self._cursor, low)
        self._backlog_end = 0
        self._cursor_behind = True

    def _run(self) -> None:
        while self.run_once():
            pass
        self._finish()

    def run_once(self) -> bool:
        """One turn of the uplink thread's loop: connect if the socket is closed (waiting out the back-off after a
        failure), let the client read and write (`loop`, which calls the callbacks), handle PUBACKs, then publish
        what the window has room for. False once a stop has drained (the thread then finishes)."""
        self.stats.progress("uplink")
        if self._draining_done():
            return False
        if not self._sock_open:
            try:
                self._connect_once(self._first_connect)
                self._first_connect = False
                self._sock_open = True
            except (OSError, socket.timeout, ssl.SSLError, ValueError) as e:
                self.stats.inc("uplink_connect_failures")
                self._last_error = self._explain(e)
                if not self._down_reported:
                    log.warning("cannot reach the broker at %s: %s; buffering to the outbox at %s, retrying with "
                                "back-off up to %g s", self.mqtt.broker.url, self._last_error, self.outbox.path,
                                self.mqtt.reconnect_max_s)
                    self._down_reported = True
                if self._drain_deadline is not None:
                    return False
                self.retry_delay_s = self._backoff(self.retry_delay_s)
                return True
        rc = self._client.loop(timeout=0.05)
        self._handle_acks()
        if self._reconnect_requested:
            self._disconnect_cleanly()
            return True
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._sock_open = False
            if not self._connacked and not self._last_error.startswith("broker refused"):
                # closed before a CONNACK: a TLS alert (client certificate required or refused), a listener that
                # is not MQTT, or a broker going down mid-handshake (a link lost after a CONNACK is not one of
                # these: paho's loop() has already called _on_disconnect, which reported it)
                self.stats.inc("uplink_connect_failures")
                self._last_error = (f"the broker closed the connection before accepting it "
                                    f"({mqtt.error_string(rc)})"
                                    + ("; with TLS, check mqtt.cert_file and mqtt.key_file: the broker may "
                                       "require a client certificate" if self.mqtt.broker.tls else ""))
                if not self._down_reported:
                    log.warning("cannot connect to %s: %s; buffering to the outbox and retrying",
                                self.mqtt.broker.url, self._last_error)
                    self._down_reported = True
            if self._session_up:
                self._on_disconnect(self._client, None, None, mqtt.error_string(rc), None)
            self._session_up = False
            if self._drain_deadline is not None:
                return False
            self.retry_delay_s = self._backoff(self.retry_delay_s)
            return True
        if self._session_up:
            self.retry_delay_s = self.mqtt.reconnect_min_s
            while self._responses:
                self._client.publish(self.response_topic, self._responses.popleft(), qos=1)
            self.format.tick(self._client)
            if self._ready:
                self._pump()
        return True

    def _finish(self) -> None:
        if self._session_up:
            info = self.format.on_stop(self._client)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and info is not None and not info.is_published():
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

    def _handle_acks(self) -> None:
        self._confirm_written()
        if not self._acked_mids:
            return
        mids, self._acked_mids = self._acked_mids, []
        now = time.monotonic()
        latencies = [now - t for t in (self._sent_at.pop(m, None) for m in mids) if t is not None]
        if latencies:
            self.stats.set("uplink_publish_latency_ms", round(1000 * max(latencies), 1))
        ids: list[int] = []
        for m in mids:
            group = self._inflight.pop(m, None)
            if group is None:
                continue
            if m in self._qos0_mids:  # QoS 0: written to the socket, not yet known to be read by the broker
                self._qos0_mids.discard(m)
                if not self._written:
                    self._written_at = now
                self._written.extend(group)
            else:
                ids.extend(group)
        if ids:
            self.outbox.ack(ids)
            self.stats.inc("uplink_acked", len(ids))
        self.stats.set("uplink_inflight", len(self._inflight))
        self._confirm_written()

    def _confirm_written(self) -> None:
        """QoS 0 records: ask for a confirmation (UNSUBSCRIBE → UNSUBACK) about every 0.2 s or `inflight`
        records, and let those it confirmed leave the outbox."""
        while self._unsub_acked:
            ids = self._confirming.pop(self._unsub_acked.pop(), None)
            if ids:
                self.outbox.ack(ids)
                self.stats.inc("uplink_acked", len(ids))
        if not self._written or not self._session_up:
            return
        if (len(self._written) < self.mqtt.inflight and time.monotonic() - self._written_at < 0.2
                and self._drain_deadline is None):
            return
        rc, mid = self._client.unsubscribe(self.confirm_topic)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._confirming[mid] = self._written
            self._written = []

    def _set_sensors(self, config: Config) -> None:
        """The sensors' names (the longest first: it wins) and a cache stream -> sensor ("": not grouped), swapped
        in one assignment (describe() runs on the pipeline's thread)."""
        self._grouping: tuple[list[str], dict[str, str]] = (
            sorted((s.name for s in config.sensors), key=len, reverse=True), {})

    def _sensor(self, r: Record) -> str:
        """The sensor whose poll `r` belongs to when grouping, else ""."""
        names, sensor_of = self._grouping
        sensor = sensor_of.get(r.stream)
        if sensor is None:
            sensor = next((s for s in names if r.stream.startswith(s + ".")), "")
            sensor_of[r.stream] = sensor
        return sensor if sensor and groupable(r, sensor) else ""

    def _compressed(self, body: bytes) -> tuple[bytes, Any]:
        """`body`, deflated when configured, big enough and smaller for it; and the MQTT 5 properties to send."""
        if self.mqtt.compress != "deflate" or len(body) < self.mqtt.compress_min_bytes:
            return body, None
        z = deflate(body)
        if len(z) >= len(body):
            return body, None
        self.stats.inc("uplink_compressed")
        if self.mqtt.protocol != "5":
            return z, None
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = CONTENT_TYPE_DEFLATE
        return z, props

    def _publish_group(self, records: list[Record], historical: bool, sensor: str = "") -> bool:
        if sensor:  # mqtt.group = "sensor" (JSON only: the config refuses it with Sparkplug)
            topic, body = encode_grouped(records, self.agent_id, self.prefix, sensor, historical=historical)
            messages = [(topic, body, 1)]
        else:
            messages = self.format.encode(records, historical)
        if not messages:  # the format represents these records otherwise (a Sparkplug DDEATH already sent)
            self.outbox.ack([r.id for r in records])
            self.stats.inc("uplink_published", len(records))
            return True
        for topic, body, qos in messages[:-1]:  # e.g. a Sparkplug DBIRTH before the first DDATA of a device
            self._client.publish(topic, body, qos=qos)
        topic, body, qos = messages[-1]
        props = None
        if self.mqtt.format == "json":
            body, props = self._compressed(body)
        info = self._client.publish(topic, body, qos=qos, properties=props)
        if qos == 0:
            self._qos0_mids.add(info.mid)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN,
                           MQTTErrorCode.MQTT_ERR_CONN_LOST):
            self.stats.inc("uplink_publish_errors")
            log.error("publish of %s seq %d failed: %s", records[0].stream, records[0].seq,
                      mqtt.error_string(info.rc))
            return False
        # NO_CONN / CONN_LOST: paho keeps a QoS 1 message and sends it on reconnect; a QoS 0 one is never
        # reported written: either way it stays in flight, and a fresh session (_rewind) sends it again
        self._inflight[info.mid] = [r.id for r in records]
        self._sent_at[info.mid] = time.monotonic()
        self.stats.inc("uplink_published", len(records))
        self.stats.inc("uplink_messages")
        if historical:
            self.stats.inc("uplink_published_historical", len(records))
        return True

    def _publish_all(self, records: list[Record], historical: bool) -> int:
        """Publish records (oldest first). With batching, records of one stream in this chunk are grouped, up to
        `batch` per message; per-stream order is kept. Returns the id up to which everything was handed to paho."""
        if not records:
            return 0
        sensors: list[str] = []
        if self.group:
            groups, sensors = self._poll_groups(records)
        elif self.mqtt.batch > 1:
            by_stream: dict[str, list[Record]] = {}
            for r in records:
                by_stream.setdefault(r.stream, []).append(r)
            groups = [rs[i:i + self.mqtt.batch] for rs in by_stream.values()
                      for i in range(0, len(rs), self.mqtt.batch)]
            groups.sort(key=lambda g: g[0].id)
        else:
            groups = [[r] for r in records]
        for k, group in enumerate(groups):
            if not self._publish_group(group, historical, sensors[k] if sensors else ""):
                unpublished = [r.id for g in groups[k:] for r in g]
                return min(unpublished) - 1  # what was published above this is sent again: a bounded duplicate
        return records[-1].id

    def _poll_groups(self, records: list[Record]) -> tuple[list[list[Record]], list[str]]:
        """mqtt.group = "sensor": consecutive readings of one sensor with one timestamp form a group (a stream at
        most once in it; a sensor's records interleave with other sensors' only); other records go alone, or
        `batch` of one stream together. Groups are created in record order and sorted by their first record, so
        each stream's records keep their order. Returns the groups and each one's sensor ("": not grouped)."""
        open_: dict[str, tuple[int, list[Record]]] = {}  # sensor -> (timestamp, its latest group)
        by_stream: dict[str, list[Record]] = {}
        groups: list[tuple[list[Record], str]] = []
        for r in records:
            sensor = self._sensor(r)
            if not sensor:
                rs = by_stream.setdefault(r.stream, [])
                rs.append(r)
                if len(rs) == self.mqtt.batch:
                    groups.append((rs, ""))
                    by_stream[r.stream] = []
                continue
            ts, g = open_.get(sensor, (None, []))
            if ts != r.ts_ns or any(x.stream == r.stream for x in g):
                g = []
                open_[sensor] = (r.ts_ns, g)
                groups.append((g, sensor))
            g.append(r)
        groups.extend((rs, "") for rs in by_stream.values() if rs)
        groups.sort(key=lambda g: g[0][0].id)
        return [g for g, _ in groups], [s for _, s in groups]

    def _pump(self) -> None:
        assert self._reader is not None
        room = self.mqtt.inflight - len(self._inflight)
        if room <= 0:
            return
        backlog = self._backlog_end > 0 and self._backlog_cursor < self._backlog_end
        live_room = max(1, math.ceil(room * self.live_share)) if backlog else room
        if self._new_data.is_set() or backlog or self._cursor_behind:
            self._new_data.clear()
            batch = self.mqtt.batch * self._fetch_factor
            live = self._reader.fetch(self._cursor, live_room * batch)
            self._cursor_behind = len(live) == live_room * batch
            last = self._publish_all(live, False)
            if last:
                self._cursor = last
            room = self.mqtt.inflight - len(self._inflight)
        if backlog and room > 0:
            batch = self.mqtt.batch * self._fetch_factor
            old = [r for r in self._reader.fetch(self._backlog_cursor, room * batch) if r.id <= self._backlog_end]
            last = self._publish_all(old, True)
            if last:
                self._backlog_cursor = last
            if len(old) < room * batch and (not old or last == old[-1].id):
                self._backlog_cursor = self._backlog_end
            if self._backlog_cursor >= self._backlog_end:
                log.info("backlog published")
                self._backlog_end = 0
        self.stats.set("uplink_inflight", len(self._inflight))

    @property
    def last_error(self) -> str:
        return self._last_error


class WireFormat(Protocol):
    """How records become MQTT messages. JSON (below) or Sparkplug B (`agent.sparkplug.node`)."""

    fresh_session: bool  # True: after a link loss, paho's queue is dropped and the outbox re-sent after birth

    def before_connect(self, client: mqtt.Client) -> None: ...
    def on_connect(self, client: mqtt.Client) -> bool: ...
    def on_message(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> bool: ...
    def tick(self, client: mqtt.Client) -> None: ...
    def encode(self, records: list[Record], historical: bool) -> list[tuple[str, bytes, int]]: ...
    def on_stop(self, client: mqtt.Client) -> mqtt.MQTTMessageInfo | None: ...


class JsonFormat:
    """The JSON wire format (README, "Wire format"): one message per record, or a JSON array per batch."""

    fresh_session = False

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink

    def before_connect(self, client: mqtt.Client) -> None:
        client.will_set(self.uplink.status_topic, self.uplink.status_payload("offline"), qos=1, retain=True)

    def on_connect(self, client: mqtt.Client) -> bool:
        client.publish(self.uplink.status_topic, self.uplink.status_payload("online"), qos=1, retain=True)
        return True

    def on_message(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> bool:
        return False

    def tick(self, client: mqtt.Client) -> None:
        pass

    def encode(self, records: list[Record], historical: bool) -> list[tuple[str, bytes, int]]:
        u = self.uplink
        if len(records) == 1:
            topic, body = encode(records[0], u.agent_id, u.prefix, historical=historical)
        else:  # a batch: one message, a JSON array of the records' usual bodies, all of one stream
            parts = [encode(r, u.agent_id, u.prefix, historical=historical) for r in records]
            topic, body = parts[0][0], b"[" + b",".join(p[1] for p in parts) + b"]"
        return [(topic, body, 1)]

    def on_stop(self, client: mqtt.Client) -> mqtt.MQTTMessageInfo | None:
        return client.publish(self.uplink.status_topic, self.uplink.status_payload("offline"), qos=1, retain=True)
