"""The sensor-node firmware (firmware/*.py, MicroPython) running unchanged on CPython: module shims and a runner.

`shim` provides `machine`, `time.ticks_*`, `micropython`, `sys` stdin/stdout, `select` and `gc` for one emulated
RP2040 board whose ADC reads the emulated plant; `runner.EmulatedNode` boots the firmware on one end of a pty pair.
"""
