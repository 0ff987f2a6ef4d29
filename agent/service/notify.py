"""sd_notify, spoken directly over a datagram socket (no dependency): READY, WATCHDOG, STATUS, RELOADING, STOPPING.

Owns the notify protocol and the reading of `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. Must not decide
when to ping the watchdog (that is `agent.service.watchdog`). Without `NOTIFY_SOCKET` (a terminal, a test) every
notification is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger("edge_agent.service")


def _notify_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace: a leading NUL byte, no file
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock: addresses (systemd >= 253) are not used on a Pi


class Notifier:
    """Speaks the sd_notify protocol: one datagram of `KEY=VALUE` lines per message to `$NOTIFY_SOCKET`.

    A no-op when the variable is unset. A send that fails is logged once and does not raise: the agent keeps
    running (systemd will restart it if it was the watchdog that could not be reached).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = _notify_address(raw)
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a UNIX socket path or @abstract name; not notifying systemd", raw)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False
        self.watchdog_usec = 0
        wd_raw = env.get("WATCHDOG_USEC", "")
        wd_pid = env.get("WATCHDOG_PID", "")
        if wd_raw:
            try:
                usec = int(wd_raw)
                if usec <= 0:
                    raise ValueError
            except ValueError:
                log.warning("WATCHDOG_USEC=%r is not a positive integer; watchdog pings disabled", wd_raw)
            else:
                if wd_pid and wd_pid != str(os.getpid()):
                    log.info("WATCHDOG_PID=%s is not this process (%d); watchdog pings disabled", wd_pid, os.getpid())
                else:
                    self.watchdog_usec = usec

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        data = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self.address)
            except OSError as e:
                if not self._failed:
                    log.error("cannot notify systemd at %r: %s", os.environ.get("NOTIFY_SOCKET", self.address), e)
                    self._failed = True
                return False
        if self._failed:
            log.info("notifying systemd works again")
            self._failed = False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


__all__ = ["Notifier", "monotonic_usec"]
