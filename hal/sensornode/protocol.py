"""Host side of the sensor-node wire protocol (firmware/PROTOCOL.md): COBS, CRC-32, frame codec, stream decoder.

Owns the bytes on the wire and nothing else: no serial port, no threads, no engineering units. The node side of the
same protocol is firmware/protocol.py (MicroPython); both are checked against the test vectors in PROTOCOL.md.

The decoder never raises on input bytes: every malformed frame is counted by reason and skipped, and decoding resumes
after the next 0x00 delimiter.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

PROTO_VERSION = 2  # 2: replies and DATA carry the sampling period in ns

T_DATA = 0x01
T_IDENTIFY = 0x10
T_START = 0x11
T_STOP = 0x12
T_SET_RATE = 0x13
T_PING = 0x14
T_ERROR = 0x7F
REPLY = 0x80

E_UNKNOWN = 1
E_LENGTH = 2
E_CRC = 3
E_ARG = 4
E_FRAMING = 5
ERROR_NAMES = {E_UNKNOWN: "unknown command", E_LENGTH: "bad length", E_CRC: "bad CRC", E_ARG: "bad argument",
               E_FRAMING: "bad framing"}
COMMAND_NAMES = {T_IDENTIFY: "IDENTIFY", T_START: "START", T_STOP: "STOP", T_SET_RATE: "SET_RATE", T_PING: "PING"}

DATA_HDR = struct.Struct("<BBHIIII")  # type, channel mask, n, seq, t0_us, period_ns, dropped
MAX_FRAME = 16384  # longest encoded frame accepted (a DATA frame of 1024 samples x 5 channels is ~10.3 kB)

# ---- COBS and CRC ------------------------------------------------------------------------------------------------


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32/ISO-HDLC as in zlib: reflected poly 0x04C11DB7, init and xorout 0xFFFFFFFF."""
    return zlib.crc32(data, value) & 0xFFFFFFFF


def cobs_encode(data: bytes) -> bytes:
    """COBS (Cheshire & Baker). A run of 254 non-zero bytes is followed by a new group even at the end."""
    out = bytearray()
    n = len(data)
    i = 0
    while True:
        j = data.find(b"\x00", i)
        end = n if j < 0 else j
        while end - i >= 254:
            out.append(255)
            out += data[i:i + 254]
            i += 254
        out.append(end - i + 1)
        out += data[i:end]
        if j < 0:
            return bytes(out)
        i = j + 1


class CobsError(ValueError):
    pass


def cobs_decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode one frame's COBS groups (delimiter stripped); raise CobsError if malformed."""
    if bytes(data).find(0) >= 0:
        raise CobsError("zero byte inside a COBS frame")
    out = bytearray()
    n = len(data)
    i = 0
    while i < n:
        code = data[i]
        end = i + code
        if end > n:
            raise CobsError(f"COBS group of {code - 1} bytes overruns the frame ({n - i - 1} left)")
        out += data[i + 1:end]
        i = end
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(body: bytes) -> bytes:
    """Wire bytes of one frame: COBS(body + CRC-32 LE) + 0x00."""
    return cobs_encode(body + struct.pack("<I", crc32(body))) + b"\x00"


# ---- frames --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataFrame:
    mask: int
    n: int
    seq: int
    t0_us: int
    period_ns: int  # the sampling period the node's timer really runs
    dropped: int
    samples: np.ndarray  # int16, shape (n, channels)

    @property
    def rate_hz(self) -> float:
        """The real sample rate (1e9 / period_ns): 3205.128 Hz for a requested 3200 Hz on the rp2 timer."""
        return 1e9 / self.period_ns

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(c for c in range(8) if self.mask >> c & 1)


@dataclass(frozen=True, slots=True)
class Identity:
    tag: int
    proto: int
    version: tuple[int, int, int]
    available_mask: int
    mask: int
    adc_bits: int
    ticks_bits: int
    reset_cause: int
    block: int
    period_ns: int  # the sampling period in effect
    min_rate_hz: int  # the rates SET_RATE accepts (requested, in Hz)
    max_rate_hz: int
    board_id: str  # hex of machine.unique_id()
    name: str

    @property
    def rate_hz(self) -> float:
        return 1e9 / self.period_ns if self.period_ns else 0.0

    @property
    def available_channels(self) -> tuple[int, ...]:
        return tuple(c for c in range(8) if self.available_mask >> c & 1)


@dataclass(frozen=True, slots=True)
class Reply:
    """A command's reply: its type (request | 0x80), tag and decoded fields."""

    type: int
    tag: int
    fields: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    tag: int
    request_type: int
    code: int
    message: str

    def __str__(self) -> str:
        what = COMMAND_NAMES.get(self.request_type, f"type 0x{self.request_type:02x}")
        return f"node error {ERROR_NAMES.get(self.code, self.code)} for {what}: {self.message}"


Frame = DataFrame | Identity | Reply | ErrorFrame


class FrameError(ValueError):
    """A frame with a valid CRC whose contents do not match its type (counted as `malformed`)."""


_IDENT = struct.Struct("<BBBBBBBBBBBHIIIB")
_REPLY_FIELDS = {
    T_START | REPLY: (struct.Struct("<BBBHIHI"), ("mask", "n", "period_ns", "slots", "seq")),
    T_STOP | REPLY: (struct.Struct("<BBII"), ("seq", "dropped_total")),
    T_SET_RATE | REPLY: (struct.Struct("<BBI"), ("period_ns",)),
    T_PING | REPLY: (struct.Struct("<BBIBIIIII"),
                     ("token", "streaming", "seq", "dropped_total", "rx_errors", "frames_sent", "uptime_ms")),
}


def parse_body(body: bytes) -> Frame:
    """Decode a CRC-checked body. Raises FrameError for an unknown type or a wrong length."""
    t = body[0]
    if t == T_DATA:
        if len(body) < DATA_HDR.size:
            raise FrameError(f"DATA frame of {len(body)} bytes, expected at least {DATA_HDR.size}")
        _, mask, n, seq, t0, period_ns, dropped = DATA_HDR.unpack_from(body)
        nch = bin(mask).count("1")
        want = DATA_HDR.size + 2 * n * nch
        if nch == 0 or n == 0 or period_ns == 0 or len(body) != want:
            raise FrameError(f"DATA frame mask=0x{mask:02x} n={n} period_ns={period_ns}: {len(body)} bytes, "
                             f"expected {want}")
        samples = np.frombuffer(body, dtype="<i2", offset=DATA_HDR.size).reshape(n, nch)
        return DataFrame(mask, n, seq, t0, period_ns, dropped, samples)
    if t == T_IDENTIFY | REPLY:
        if len(body) < _IDENT.size:
            raise FrameError(f"IDENTIFY reply of {len(body)} bytes, expected at least {_IDENT.size}")
        (_, tag, proto, v0, v1, v2, avail, mask, bits, tbits, cause, block, period_ns, rmin, rmax,
         uid_len) = _IDENT.unpack_from(body)
        uid = body[_IDENT.size:_IDENT.size + uid_len]
        if len(uid) != uid_len:
            raise FrameError("IDENTIFY reply shorter than its board id")
        name = body[_IDENT.size + uid_len:].decode("ascii", "replace")
        return Identity(tag, proto, (v0, v1, v2), avail, mask, bits, tbits, cause, block, period_ns, rmin, rmax,
                        uid.hex(), name)
    if t == T_ERROR:
        if len(body) < 4:
            raise FrameError(f"ERROR frame of {len(body)} bytes, expected at least 4")
        return ErrorFrame(body[1], body[2], body[3], body[4:].decode("ascii", "replace"))
    spec = _REPLY_FIELDS.get(t)
    if spec is None:
        raise FrameError(f"unknown frame type 0x{t:02x}")
    st, names = spec
    if len(body) != st.size:
        raise FrameError(f"reply 0x{t:02x} of {len(body)} bytes, expected {st.size}")
    values = st.unpack(body)
    return Reply(t, values[1], dict(zip(names, values[2:])))


def command(kind: int, tag: int, *args: int) -> bytes:
    """Wire bytes of a host command (PROTOCOL.md, "Commands")."""
    fmt = {T_IDENTIFY: "", T_STOP: "", T_START: "BH", T_SET_RATE: "I", T_PING: "I"}.get(kind)
    if fmt is None:
        body = struct.pack("<BB", kind, tag) + bytes(args)
    else:
        body = struct.pack("<BB" + fmt, kind, tag, *args)
    return encode_frame(body)


# ---- stream decoder --------------------------------------------------------------------------------------------------


@dataclass
class DecoderStats:
    frames: int = 0  # good frames decoded
    bytes: int = 0  # bytes fed
    crc_errors: int = 0
    cobs_errors: int = 0
    short: int = 0  # fewer than 5 bytes between delimiters (too short for a CRC)
    oversize: int = 0  # longer than MAX_FRAME before a delimiter
    malformed: int = 0  # good CRC, contents do not match the type
    discarded_bytes: int = 0  # bytes thrown away in bad frames

    @property
    def bad_frames(self) -> int:
        return self.crc_errors + self.cobs_errors + self.short + self.oversize + self.malformed


class Decoder:
    """Turns a byte stream into frames. `feed(data)` yields each good frame; bad ones are counted in `stats`.

    A frame is accepted only if its COBS decoding is valid, its CRC-32 matches and its layout matches its type.
    After any error decoding resumes at the next 0x00, so one corrupted frame costs that frame only.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.stats = DecoderStats()
        self._buf = bytearray()
        self._skipping = False  # inside an oversize frame: drop bytes until the next delimiter

    def reset(self) -> None:
        """Forget a partial frame (after reconnecting)."""
        self._buf.clear()
        self._skipping = False

    def feed(self, data: bytes | bytearray) -> Iterator[Frame]:
        self.stats.bytes += len(data)
        start = 0
        while True:
            j = data.find(0, start)
            if j < 0:
                self._append(data, start, len(data))
                return
            self._append(data, start, j)
            start = j + 1
            if self._skipping:
                self._skipping = False
                continue
            if not self._buf:
                continue  # back-to-back delimiters: an empty frame, used as a resync preamble
            encoded = bytes(self._buf)
            self._buf.clear()
            frame = self._decode(encoded)
            if frame is not None:
                yield frame

    def _append(self, data: bytes | bytearray, a: int, b: int) -> None:
        if a >= b:
            return
        if self._skipping:
            self.stats.discarded_bytes += b - a
            return
        self._buf += data[a:b]
        if len(self._buf) > self.max_frame:
            self.stats.oversize += 1
            self.stats.discarded_bytes += len(self._buf)
            self._buf.clear()
            self._skipping = True

    def _decode(self, encoded: bytes) -> Frame | None:
        try:
            raw = cobs_decode(encoded)
        except CobsError:
            self.stats.cobs_errors += 1
            self.stats.discarded_bytes += len(encoded) + 1
            return None
        if len(raw) < 5:
            self.stats.short += 1
            self.stats.discarded_bytes += len(encoded) + 1
            return None
        body = raw[:-4]
        if int.from_bytes(raw[-4:], "little") != crc32(body):
            self.stats.crc_errors += 1
            self.stats.discarded_bytes += len(encoded) + 1
            return None
        try:
            frame = parse_body(body)
        except FrameError:
            self.stats.malformed += 1
            self.stats.discarded_bytes += len(encoded) + 1
            return None
        self.stats.frames += 1
        return frame
