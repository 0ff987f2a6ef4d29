"""Hardware abstraction layer of edge-agent.

`hal` knows buses and chips: GPIO, I2C, serial and Modbus, each with a real and an emulated backend.
It knows nothing about MQTT, SQLite or features, and it never imports `agent`.
"""

from hal.types import Block, Quality, Reading

__all__ = ["Block", "Quality", "Reading"]
