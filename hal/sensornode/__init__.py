"""Host side of the RP2040 sensor node: wire protocol (`protocol`) and the "sensornode" stream driver (`driver`).

The node's firmware is firmware/ (MicroPython); its protocol is specified in firmware/PROTOCOL.md.
"""
