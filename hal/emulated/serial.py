"""An emulated serial line: two pty pairs joined by a relay thread, so both ends have a device path.

The driver opens `near_path` exactly like /dev/ttyUSB0 (pyserial, pymodbus); the emulator (a pymodbus RTU server,
the sensor-node firmware) opens `far_path`. The relay is the wire: it can go dead (`cut`) or garble bytes
(`corrupt`), which is how line faults are injected. Baud rate is ignored by ptys; bytes arrive as fast as written.
"""

from __future__ import annotations

import os
import select
import threading
import tty
from collections.abc import Callable
from typing import Any


class PtyLink:
    def __init__(self, name: str = "serial") -> None:
        self.name = name
        self._m_near, self._s_near = os.openpty()
        self._m_far, self._s_far = os.openpty()
        for fd in (self._s_near, self._s_far):
            tty.setraw(fd)
        self.near_path = os.ttyname(self._s_near)
        self.far_path = os.ttyname(self._s_far)
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self.cut = False  # True: the wire is dead, bytes vanish in both directions
        self.corrupt: Callable[[bytes, bool], bytes] | None = None  # (data, towards_near) -> data actually delivered
        self.bytes_relayed = 0
        self._thread = threading.Thread(target=self._relay, name=f"pty-link-{name}", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        pair = {self._m_near: self._m_far, self._m_far: self._m_near}
        while not self._closed:
            try:
                ready, _, _ = select.select([self._m_near, self._m_far, self._wake_r], [], [])
            except (OSError, ValueError):
                return
            for fd in ready:
                if fd == self._wake_r:
                    return
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if self.cut or not data:
                    continue
                if self.corrupt is not None:
                    data = self.corrupt(data, fd == self._m_far)
                try:
                    os.write(pair[fd], data)
                    self.bytes_relayed += len(data)
                except OSError:
                    pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2)
        for fd in (self._m_near, self._s_near, self._m_far, self._s_far, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def emulated_serial_line(context: Any, name: str, bus_type: str, values: dict[str, Any]) -> Any:
    """The ("serial", "emulated") backend of `hal.backends`: a `hal.serialbus.SerialLine` over a new pty pair."""
    from hal.serialbus import SerialLine

    return SerialLine(name, values, PtyLink(name))


__all__ = ["PtyLink", "emulated_serial_line"]
