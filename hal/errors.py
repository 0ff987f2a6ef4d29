"""Errors of the hardware layer: one root, families beneath it, each leaf also the builtin it resembles.

Messages say what was expected, what was found and where (bus, address, unit id).
"""


class HalError(Exception):
    """Root of every error raised by `hal`."""


class ConfigurationError(HalError, ValueError):
    """A bus, driver or register map was described wrongly (raised before any hardware is touched)."""


class BusError(HalError, OSError):
    """A bus transaction failed (NACK, timeout, CRC error, device gone)."""


class DeviceNotFound(BusError):
    """Nothing answers at the address or unit id."""


class WrongDevice(HalError, LookupError):
    """Something answers, but its ID register says it is not the expected chip."""


class Unsupported(HalError, NotImplementedError):
    """The backend lacks a capability (e.g. writing an output not marked writable)."""


class BusTimeout(BusError, TimeoutError):
    """No (complete) answer within the bus's timeout."""


class CrcError(BusError):
    """An answer arrived but its checksum was wrong (noise, a second master, a wrong baud rate)."""


class ProtocolError(BusError):
    """An answer arrived but does not fit the request (short, long, garbled): none of its values are used."""


class BusStuck(BusError):
    """The bus itself is unusable (SDA held low, adapter unplugged): every transaction fails."""


class DeviceException(BusError):
    """The device answered with a Modbus exception response; `code` is the exception code."""

    NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
             5: "acknowledge", 6: "server device busy", 8: "memory parity error", 10: "gateway path unavailable",
             11: "gateway target device failed to respond"}

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
