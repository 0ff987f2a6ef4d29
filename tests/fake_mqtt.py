"""A stand-in for paho's client *interface* (`agent.uplink.MqttClient`), for the fast state-machine tests of the
uplink (tests/agent/test_uplink_state.py) and the Sparkplug node (tests/agent/sparkplug/test_sparkplug_link.py).
Never a replacement for the broker-backed tests: those use the real paho client and a real Mosquitto.

It records what is written, and the test plays the broker by firing paho's VERSION2 callbacks (`connack`, `puback`,
`unsuback`, `lose_link`), on the test's thread, between turns of the uplink's loop, as paho's `loop()` would. It
keeps the paho behaviour the uplink relies on: a QoS 1 message stays in flight until its PUBACK and is sent again
(DUP set if it had been written) after the next CONNACK of a reconnect; a QoS 0 message is reported published
(`on_publish`) once written, at the next `loop()`; a lost link is noticed by `loop()`, which calls `on_disconnect`
and returns MQTT_ERR_CONN_LOST; `on_socket_open` is called right before CONNECT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paho.mqtt.client import ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode


@dataclass
class Sent:
    """One packet the uplink wrote."""

    kind: str  # "publish" or "unsubscribe"
    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool = False
    dup: bool = False


class FakeInfo:
    """paho's MQTTMessageInfo as the uplink reads it: mid, rc, is_published()."""

    def __init__(self, mid: int, rc: MQTTErrorCode = MQTTErrorCode.MQTT_ERR_SUCCESS) -> None:
        self.mid, self.rc, self.published = mid, rc, False

    def is_published(self) -> bool:
        return self.published


class FakeClient:
    """Records the uplink's calls; the test fires the broker's side (connack, puback, unsuback, lose_link)."""

    def __init__(self, settings: Any, client_id: str) -> None:
        self.settings, self.client_id = settings, client_id
        self.on_connect = self.on_disconnect = self.on_publish = self.on_unsubscribe = None
        self.on_message = self.on_subscribe = self.on_socket_open = None
        self.refuse: BaseException | None = None  # what connect() raises: the broker is down
        self.sock: object | None = None
        self.session = False  # CONNACK received on the open socket
        self.lost = False  # the link is dead (what is written goes nowhere)
        self.unnoticed = 0  # loop() calls that still succeed on a dead link (the keep-alive has not expired)
        self.fresh = False  # a socket opened since the last CONNACK: paho re-sends in-flight messages after it
        self.written: set[int] = set()  # mids paho wrote to a socket (dead or alive)
        self.wire: list[Sent] = []  # every packet the broker received, in order (re-sends too, with dup)
        self.inflight: dict[int, tuple[Sent, FakeInfo]] = {}  # QoS 1 awaiting PUBACK (kept across reconnects)
        self.written_qos0: list[int] = []  # QoS 0 written; on_publish fires at the next loop()
        self.unsubscribes: dict[int, Sent] = {}
        self.connects = self.disconnects = 0
        self.will: tuple[str, bytes] | None = None
        self._mid = 0
        self.address: tuple[str, int, int] = ("", 0, 0)

    # -- the calls the uplink makes (agent.uplink.MqttClient) -------------------------------------------------

    def _next_mid(self) -> int:
        self._mid += 1
        return self._mid

    def connect(self, host: str, port: int = 1883, keepalive: int = 60) -> MQTTErrorCode:
        self.address = (host, port, keepalive)
        if self.refuse is not None:
            raise self.refuse
        self.connects += 1
        self.sock, self.session, self.lost, self.fresh = object(), False, False, True
        if self.on_socket_open is not None:
            self.on_socket_open(self, None, self.sock)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def reconnect(self) -> MQTTErrorCode:
        """paho: the same socket set-up; the in-flight QoS 1 messages are re-sent after the CONNACK."""
        return self.connect(*self.address)

    def loop(self, timeout: float = 1.0) -> MQTTErrorCode:
        if self.sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if self.lost and self.unnoticed > 0:
            self.unnoticed -= 1
        elif self.lost:  # paho: the socket closes, on_disconnect fires, loop() reports the loss
            self.sock, self.session = None, False
            self.on_disconnect(self, None, DisconnectFlags(False), ReasonCode(PacketTypes.DISCONNECT,
                                                                              "Unspecified error"), None)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        written, self.written_qos0 = self.written_qos0, []
        for mid in written:
            self.on_publish(self, None, mid, ReasonCode(PacketTypes.PUBACK, "Success"), None)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def socket(self) -> object | None:
        return self.sock

    def disconnect(self) -> MQTTErrorCode:
        if self.sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        self.sock, self.session = None, False
        self.disconnects += 1
        self.on_disconnect(self, None, DisconnectFlags(False), ReasonCode(PacketTypes.DISCONNECT, "Success"), None)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                properties: Any = None) -> FakeInfo:
        msg = Sent("publish", topic, bytes(payload), qos, self._next_mid(), retain)
        info = FakeInfo(msg.mid)
        if qos == 1:
            self.inflight[msg.mid] = (msg, info)
        if self.sock is None or not self.session:
            info.rc = MQTTErrorCode.MQTT_ERR_NO_CONN  # paho keeps a QoS 1 message for the next session
        else:
            self.written.add(msg.mid)
            if not self.lost:  # on a dead link the bytes go nowhere, but paho does not know yet
                self.wire.append(msg)
            if qos == 0:
                self.written_qos0.append(msg.mid)
        return info

    def subscribe(self, topic: Any, qos: int = 0) -> tuple[MQTTErrorCode, int]:
        return MQTTErrorCode.MQTT_ERR_SUCCESS, self._next_mid()

    def unsubscribe(self, topic: str) -> tuple[MQTTErrorCode, int | None]:
        if self.sock is None or not self.session:
            return MQTTErrorCode.MQTT_ERR_NO_CONN, None
        msg = Sent("unsubscribe", topic, b"", 1, self._next_mid())
        if not self.lost:
            self.wire.append(msg)
            self.unsubscribes[msg.mid] = msg
        return MQTTErrorCode.MQTT_ERR_SUCCESS, msg.mid

    def will_set(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False) -> None:
        self.will = (topic, bytes(payload))

    # -- the broker's side, fired by the test ------------------------------------------------------------------

    def connack(self, reason: str = "Success") -> None:
        assert self.sock is not None, "CONNACK without a connection"
        rc = ReasonCode(PacketTypes.CONNACK, reason)
        self.session = not rc.is_failure
        waiting = [msg for msg, _info in self.inflight.values()] if self.fresh else []
        self.fresh = False
        self.on_connect(self, None, ConnectFlags(False), rc, None)
        if self.session:  # paho, after on_connect: what was in flight before this CONNACK, again (DUP if written)
            for msg in waiting:
                self.wire.append(Sent(msg.kind, msg.topic, msg.payload, msg.qos, msg.mid, msg.retain,
                                      dup=msg.mid in self.written))
                self.written.add(msg.mid)

    def puback(self, *mids: int) -> None:
        for mid in mids:
            _msg, info = self.inflight.pop(mid)
            info.published = True
            self.on_publish(self, None, mid, ReasonCode(PacketTypes.PUBACK, "Success"), None)

    def unsuback(self, mid: int) -> None:
        del self.unsubscribes[mid]
        self.on_unsubscribe(self, None, mid, [ReasonCode(PacketTypes.UNSUBACK, "Success")], None)

    def deliver(self, topic: str, payload: bytes) -> None:
        """A message from the broker on a subscribed topic (paho's own MQTTMessage value)."""
        msg = MQTTMessage(topic=topic.encode())
        msg.payload = payload
        self.on_message(self, None, msg)

    def lose_link(self, unnoticed: int = 0) -> None:
        """The link dies; paho notices at the loop() call after `unnoticed` more (its keep-alive)."""
        self.lost, self.unnoticed = True, unnoticed

    # -- reading what went out ---------------------------------------------------------------------------------

    def data(self) -> list[Sent]:
        """Data messages that reached the broker (JSON: not the status topic; Sparkplug: DDATA)."""
        return [s for s in self.wire if s.kind == "publish" and is_data(s.topic)]

    def data_inflight(self) -> list[int]:
        """mids of data messages awaiting their PUBACK, oldest first."""
        return [mid for mid, (msg, _) in self.inflight.items() if is_data(msg.topic)]


def is_data(topic: str) -> bool:
    return not topic.endswith("/status") and not any(k in topic for k in ("/NBIRTH/", "/DBIRTH/", "DEATH/"))
