"""Serial lines through pyserial: the real port named in the bus table, or an emulated pty pair.

`serial_line(context, bus)` returns the shared `SerialLine` of a `type = "serial"` bus. A driver calls `open()` to
get a configured `serial.Serial`. On an emulated bus (the ("serial", "emulated") row of `hal.backends`, never imported
from here) the line carries a `hal.emulated.serial.PtyLink`: the driver's end
is `path`, and whoever plays the device (the sensor-node firmware emulator, a test) opens `far_path`; line faults are
injected on `link` (`cut`, `corrupt`). ptys ignore the baud rate, and pyserial's inter_byte_timeout does nothing on
Linux, so framing must not rely on either.
"""

from __future__ import annotations

from typing import Any


class SerialLine:
    def __init__(self, name: str, options: dict[str, Any], link: Any = None) -> None:
        self.name = name
        self.options = dict(options)
        self.link = link
        self.path = link.near_path if link is not None else self.options.get("port", "")
        self.far_path = link.far_path if link is not None else None
        self._ports: list[Any] = []

    def open(self, **overrides: Any) -> Any:
        """A configured `serial.Serial` on this line (the caller owns and closes it)."""
        import serial

        from hal.errors import BusError

        o = {**self.options, **overrides}
        try:
            port = serial.Serial(self.path, baudrate=int(o.get("baudrate", 115200)), bytesize=int(o.get("bytesize", 8)),
                                 parity=str(o.get("parity", "N")), stopbits=int(o.get("stopbits", 1)),
                                 timeout=float(o.get("timeout_s", 0.5)))
        except serial.SerialException as e:
            raise BusError(f"serial bus {self.name}: cannot open {self.path}: {e}") from None
        self._ports.append(port)
        return port

    def close(self) -> None:
        for p in self._ports:
            try:
                p.close()
            except Exception:
                pass
        self._ports.clear()
        if self.link is not None:
            self.link.close()


def serial_line(context: Any, bus: str | None, sensor: str = "serial") -> SerialLine:
    from hal.backends import open_bus
    from hal.buses import bus_config

    bus_type, values, emulated = bus_config(context, bus, ("serial",), sensor)
    return open_bus(context, "serial", bus, bus_type, values, emulated)


def real_serial_line(context: Any, name: str, bus_type: str, values: dict[str, Any]) -> SerialLine:
    """The ("serial", "real") backend of `hal.backends`: the port named in the bus table."""
    return SerialLine(name, values)


__all__ = ["SerialLine", "serial_line", "real_serial_line"]
