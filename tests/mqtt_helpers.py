"""Test helpers with real parts: a Mosquitto broker on a free loopback port and a paho subscriber."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, up: bool = True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return True
        except OSError:
            if not up:
                return True
        time.sleep(0.05)
    return False


class MosquittoBroker:
    """A real mosquitto process on 127.0.0.1:<port>, restartable on the same port; stopped by PID."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "", persistent: bool = False,
                 password_file: Path | None = None) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto); .ci/run installs it")
        self.exe = exe
        self.workdir = workdir
        self.port = port or free_port()
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        # persistent: subscribers' sessions and queued QoS 1 messages survive a broker restart (saved at exit)
        persistence = (f"persistence true\npersistence_location {workdir}/\n"
                       f"persistence_file mosquitto-{self.port}.db\n" if persistent else "persistence false\n")
        # as root, mosquitto drops to the `mosquitto` user, which cannot write our temporary directory
        user = f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        auth = f"allow_anonymous false\npassword_file {password_file}\n" if password_file else "allow_anonymous true\n"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\n{auth}log_dest stderr\n{user}"
                             f"max_queued_messages 0\n{persistence}{extra_conf}")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "MosquittoBroker":
        assert self.proc is None
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=logf, stderr=logf)
        logf.close()
        if not wait_port(self.port):
            raise RuntimeError(f"mosquitto did not start on port {self.port}: {self.log.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
            wait_port(self.port, up=False)


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho subscriber (QoS 1) collecting every message it receives."""

    def __init__(self, port: int, topic: str = "#", client_id: str = "test-subscriber",
                 persistent: bool = False, username: str | None = None, password: str | None = None) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        # persistent: a session the broker keeps while we are disconnected (with a persistent broker: across
        # its restarts too), so the consumer misses nothing the broker accepted
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("subscriber could not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def records(self) -> list[dict[str, Any]]:
        """JSON bodies of data messages (everything but status)."""
        return [m.json() for m in self.snapshot() if not m.topic.endswith("/status")]

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def by_stream(records: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in records:
        out.setdefault(r["stream"], []).append(r["seq"])
    return out
