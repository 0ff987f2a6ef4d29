"""A misbehaving Modbus TCP slave: short, long, wrong-unit, wrong-transaction and garbage answers.

The slave is written here from the protocol (Modbus Messaging on TCP/IP Implementation Guide v1.0b: MBAP header =
transaction id, protocol id 0, length of what follows, unit id; then the PDU: FC03/FC04 answer = FC, byte count,
registers big-endian), independent of pymodbus and of the project's emulator. The driver must never publish a
value out of a bad answer as good, never raise out of `poll()`, and answer normally again once the slave behaves.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from hal.sources import HalContext, open_source
from hal.types import Quality

REGISTERS = [{"name": "a", "address": 0, "table": "holding"}, {"name": "b", "address": 1, "table": "holding"},
             {"name": "c", "address": 2, "table": "holding"}]
VALUES = {0: 111, 1: 222, 2: 333}


class RawSlave:
    """A Modbus TCP server on a raw socket; `mode` says how to answer the next requests."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.mode = "good"
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    @staticmethod
    def _recv_exactly(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _client(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        with conn:
            try:
                while not self._stop.is_set():
                    tid, pid, length, unit = struct.unpack(">HHHB", self._recv_exactly(conn, 7))
                    pdu = self._recv_exactly(conn, length - 1)
                    self.requests += 1
                    answer = self._answer(tid, unit, pdu)
                    if answer:
                        conn.sendall(answer)
            except (OSError, ConnectionError, struct.error):
                return

    def _answer(self, tid: int, unit: int, pdu: bytes) -> bytes:
        fc, start, count = struct.unpack(">BHH", pdu[:5])
        regs = [VALUES.get(start + i, 0) for i in range(count)]
        mode = self.mode
        if mode == "short":  # self-consistent: byte count and MBAP length match the (too few) registers
            regs = regs[:-1]
        elif mode == "long":
            regs = regs + [999]
        elif mode == "garbage":
            return bytes([0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x01, 0x42])  # a nonsensical MBAP, then nothing
        elif mode == "odd_byte_count":  # byte count says 2 * count, one byte is missing
            body = struct.pack(">BB", fc, 2 * count) + b"".join(struct.pack(">H", r) for r in regs)[:-1]
            return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
        body = struct.pack(">BB", fc, 2 * len(regs)) + b"".join(struct.pack(">H", r) for r in regs)
        if mode == "wrong_unit":
            unit = (unit + 1) % 256
        if mode == "wrong_tid":
            tid = (tid + 7) % 65536
        return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def slave() -> Iterator[RawSlave]:
    s = RawSlave()
    yield s
    s.close()


@pytest.fixture
def device(slave: RawSlave) -> Iterator[object]:
    ctx = HalContext(emulate=False, buses={"plc": {"type": "modbus_tcp", "backend": "real", "host": "127.0.0.1",
                                                   "port": slave.port, "timeout_s": 0.3}})
    dev = open_source("modbus", "plc", {"registers": REGISTERS, "backoff_min_s": 0.01, "backoff_max_s": 0.01},
                      ctx, bus="plc")
    dev.open()
    yield dev
    ctx.close()


def _poll(dev) -> dict[str, object]:
    import time
    time.sleep(0.02)  # past the (tiny) back-off of a previous failure
    return {r.channel: r for r in dev.poll()}


def test_the_slave_itself_answers_good_reads(slave, device) -> None:
    r = _poll(device)
    assert {k: (v.quality, v.value) for k, v in r.items()} == {
        "plc.a": (Quality.GOOD, 111), "plc.b": (Quality.GOOD, 222), "plc.c": (Quality.GOOD, 333)}


@pytest.mark.parametrize("mode", ["short", "long", "odd_byte_count", "garbage", "wrong_unit", "wrong_tid"])
def test_a_bad_answer_makes_the_whole_read_bad_and_the_next_good_answer_is_used(slave, device, mode) -> None:
    assert all(r.quality is Quality.GOOD for r in _poll(device).values())
    slave.mode = mode
    bad = _poll(device)  # must not raise
    assert set(bad) == {"plc.a", "plc.b", "plc.c"}
    assert all(r.quality is Quality.BAD and r.value is None for r in bad.values()), \
        {k: (r.quality, r.value, r.error) for k, r in bad.items()}
    assert not any("index out of range" in (r.error or "") for r in bad.values())
    if mode in ("short", "long"):  # a well-framed answer of the wrong size: refused as such
        assert "protocol error: expected 3 registers" in bad["plc.a"].error, bad["plc.a"].error
        assert device.counters["protocol_errors"] == 1
    # the others cannot be framed (pymodbus waits for the rest, then gives up) or are not the answer to our request
    # (wrong unit, wrong transaction): a timeout or a protocol error, never values
    slave.mode = "good"
    for _ in range(20):  # the connection is re-made; a back-off may skip one poll
        good = _poll(device)
        if all(r.quality is Quality.GOOD for r in good.values()):
            break
    assert {k: v.value for k, v in good.items()} == {"plc.a": 111, "plc.b": 222, "plc.c": 333}


def test_a_short_answer_is_counted_as_a_protocol_error_naming_the_read(slave, device) -> None:
    slave.mode = "short"
    bad = _poll(device)
    err = bad["plc.a"].error
    assert "read holding 0+3" in err and "expected 3 registers, got 2" in err, err
    assert device.counters["protocol_errors"] == 1 and device.bus.counters["protocol_errors"] == 1
