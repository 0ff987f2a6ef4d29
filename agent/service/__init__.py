"""Running under systemd: sd_notify (READY, WATCHDOG, STATUS, RELOADING, STOPPING), the local status socket that
`edge-agent status` reads, and the periodic `health` record.

Split by concern, everything re-exported here (`from agent.service import Service, read_status` keeps working):
`notify` (sd_notify), `status_socket` (server and client of the status socket), `tap` (the stream-rate tap),
`watchdog` (`Service`: readiness, the watchdog decision, STATUS= lines, health records).

Owns: the notify protocol (spoken directly over a datagram socket, no dependency), the watchdog decision (ping only
while every stage of the pipeline makes progress), the status socket server (its JSON document is built by
`agent.status`). Must not touch the pipeline's internals beyond its public attributes (`agent.stats`,
`agent.outbox`, `agent.uplink`, `agent.config`, `agent.readers`); records go through `agent.outbox.put` like any
other stage's; the outbox is read through `agent.outbox.OutboxView`, never by SQL of its own.

`agent.app.run` drives it from the main thread:

    service = Service(agent, status_socket=default_status_socket(state_dir))
    agent.start(); service.ready()
    while not stop.wait(1.0): service.tick()
    service.stopping(); agent.stop()

Without `NOTIFY_SOCKET` (a terminal, a test) every notification is a no-op; the status socket and health records
work all the same.
"""

from __future__ import annotations

from agent.service.notify import Notifier, monotonic_usec
from agent.service.status_socket import (
    MAX_CLIENTS,
    REQUEST_MAX_BYTES,
    REQUEST_TIMEOUT_S,
    RUNTIME_DIR_DEFAULT,
    STATUS_SOCKET_NAME,
    StatusServer,
    StatusSocketError,
    default_status_socket,
    read_status,
    request,
    status_socket_candidates,
)
from agent.service.tap import RATE_WINDOW_S, StreamTap
from agent.service.watchdog import READER_MAX_BACKOFF_S, Service

__all__ = ["MAX_CLIENTS", "RATE_WINDOW_S", "READER_MAX_BACKOFF_S", "REQUEST_MAX_BYTES", "REQUEST_TIMEOUT_S",
           "RUNTIME_DIR_DEFAULT", "STATUS_SOCKET_NAME", "Notifier", "Service", "StatusServer", "StatusSocketError",
           "StreamTap", "default_status_socket", "monotonic_usec", "read_status", "request",
           "status_socket_candidates"]
