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
