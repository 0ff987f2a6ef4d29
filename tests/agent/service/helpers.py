"""Real parts for service tests: a NOTIFY_SOCKET datagram listener, and a sensor whose source can hang."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.config import Config, parse
from hal.emulated.sources import EmulatedVibration
from hal.types import Block

STALLING_DRIVER = "test.stalling"
STALLING_TARGET = "tests.agent.service.helpers:StallingVibration"


class NotifyListener:
    """What systemd does with NOTIFY_SOCKET: a bound AF_UNIX datagram socket collecting every message."""

    def __init__(self, path: Path | None = None, abstract: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.sock.bind(b"\0" + abstract.encode())
            self.address = "@" + abstract
        else:
            assert path is not None
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        """Every message received so far (each one a dict of its KEY=VALUE lines), oldest first."""
        new = []
        while True:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                break
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            new.append(fields)
        self.messages.extend(new)
        return new

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, **extra}

    def close(self) -> None:
        self.sock.close()


# name -> (hang, release): while `hang` is set, read_block blocks until `release` is set, like a driver stuck in a
# read that never returns
_CONTROLS: dict[str, tuple[threading.Event, threading.Event]] = {}


def controls(name: str) -> tuple[threading.Event, threading.Event]:
    return _CONTROLS.setdefault(name, (threading.Event(), threading.Event()))


class StallingVibration(EmulatedVibration):
    """The emulated accelerometer, except that its read can be made to hang (a wedged driver)."""

    def read_block(self, timeout: float) -> Block | None:
        hang, release = controls(self.name)
        if hang.is_set():
            release.wait()  # never times out: the stage stops making progress
        return super().read_block(timeout)


def service_config(port: int, agent_id: str = "svc", stalling: bool = False,
                   mqtt_overrides: Mapping[str, Any] | None = None, **extra: Any) -> Config:
    sensors: list[dict[str, Any]] = [
        {"name": "vib", "driver": "emulated.vibration", "rate_hz": 1000, "block_size": 125, "axes": ["x", "y"],
         "window": 250, "hop": 250},
        {"name": "temp", "driver": "emulated.temperature", "interval_s": 0.1},
    ]
    if stalling:
        sensors.append({"name": "stuck", "driver": STALLING_DRIVER, "rate_hz": 1000, "block_size": 125,
                        "window": 250})
    raw = {
        "agent": {"id": agent_id},
        "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive_s": 5,
                 **(mqtt_overrides or {})},
        "outbox": {"commit_interval_ms": 50},
        "sensors": sensors,
        **extra,
    }
    return parse(raw, "<test>", emulate=True)


from tests.agent_helpers import wait  # noqa: E402,F401  (one polling helper for every test)


def tick_until(service: Any, listener: NotifyListener, predicate: Callable[[dict[str, str]], bool],
               timeout: float = 20.0) -> dict[str, str] | None:
    """Call service.tick() (as cmd_run's loop does) until a message it sends satisfies `predicate`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service.tick()
        for m in listener.drain():
            if predicate(m):
                return m
        time.sleep(0.1)
    return None
