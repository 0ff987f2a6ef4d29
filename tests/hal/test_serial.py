"""The emulated serial line: a pty pair that pyserial opens like a USB adapter, with injectable line faults."""

from __future__ import annotations

import serial

from hal.serialbus import serial_line


def read_exactly(port, n):
    data = b""
    while len(data) < n:
        chunk = port.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_bytes_cross_the_emulated_line_both_ways(make_context):
    ctx = make_context({"node": {"type": "serial", "backend": "emulated", "timeout_s": 1.0}})
    line = serial_line(ctx, "node")
    near = line.open()
    far = serial.Serial(line.far_path, timeout=1.0)
    try:
        near.write(b"PING\n")
        assert read_exactly(far, 5) == b"PING\n"
        far.write(bytes(range(256)))  # binary-clean: no echo, no CR/LF translation
        assert read_exactly(near, 256) == bytes(range(256))
    finally:
        far.close()


def test_a_cut_line_delivers_nothing_and_corruption_is_injectable(make_context):
    ctx = make_context({"node": {"type": "serial", "backend": "emulated", "timeout_s": 0.2}})
    line = serial_line(ctx, "node")
    near = line.open()
    far = serial.Serial(line.far_path, timeout=0.2)
    try:
        line.link.cut = True
        near.write(b"lost")
        assert far.read(4) == b""
        line.link.cut = False
        line.link.corrupt = lambda data, towards_near: bytes(b ^ 0x01 for b in data)
        near.write(b"AB")
        assert read_exactly(far, 2) == b"@C"
    finally:
        far.close()


def test_a_real_port_that_does_not_exist_is_a_bus_error(make_context):
    import pytest

    from hal.errors import BusError
    ctx = make_context({"node": {"type": "serial", "backend": "real", "port": "/dev/does-not-exist"}}, emulate=False)
    with pytest.raises(BusError, match="serial bus node: cannot open /dev/does-not-exist"):
        serial_line(ctx, "node").open()
