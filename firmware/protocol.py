# Sensor-node wire protocol, node side: COBS framing, CRC-32 and the frame layouts of PROTOCOL.md.
#
# MicroPython subset only (no f-strings with '=', no dataclasses, no typing); also imported by the host's tests to
# check the PROTOCOL.md test vectors against this very code.

import struct

try:
    from binascii import crc32 as _crc32
except ImportError:  # a port built without binascii.crc32
    _crc32 = None

PROTO_VERSION = 2  # 2: replies and DATA carry the sampling period in ns (1: the nominal rate in Hz)

# Frame types (first byte of the body). A reply has the request's type with bit 7 set.
T_DATA = 0x01
T_IDENTIFY = 0x10
T_START = 0x11
T_STOP = 0x12
T_SET_RATE = 0x13
T_PING = 0x14
T_ERROR = 0x7F
REPLY = 0x80

# Error codes of an ERROR frame.
E_UNKNOWN = 1  # unknown command type
E_LENGTH = 2  # command body has the wrong length
E_CRC = 3  # CRC-32 mismatch
E_ARG = 4  # argument out of range
E_FRAMING = 5  # COBS decoding failed or frame too long

DATA_HDR = "<BBHIIII"  # type, channel mask, n, seq, t0_us, period_ns, dropped
DATA_HDR_LEN = 20
MAX_CMD = 64  # longest command frame the node accepts (encoded bytes)

_table = None


def _crc32_sw(data, crc):
    global _table
    if _table is None:
        t = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
            t.append(c)
        _table = t
    t = _table
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32(data, value=0):
    """CRC-32/ISO-HDLC (zlib, Ethernet): poly 0x04C11DB7 reflected, init and xorout 0xFFFFFFFF."""
    if _crc32 is not None:
        return _crc32(data, value) & 0xFFFFFFFF
    return _crc32_sw(data, value)


def cobs_encode(data):
    """COBS-encode `data` (bytes). The result contains no zero byte; the caller appends the 0x00 delimiter."""
    out = bytearray()
    n = len(data)
    i = 0
    while True:
        j = data.find(b"\x00", i)
        end = n if j < 0 else j
        while end - i >= 254:
            out.append(255)
            out.extend(data[i:i + 254])
            i += 254
        out.append(end - i + 1)
        out.extend(data[i:end])
        if j < 0:
            return out
        i = j + 1


def cobs_decode(data):
    """Decode one COBS group sequence (without the delimiter). Returns bytes, or None if malformed."""
    out = bytearray()
    n = len(data)
    i = 0
    while i < n:
        code = data[i]
        if code == 0:
            return None
        end = i + code
        if end > n:
            return None
        out.extend(data[i + 1:end])
        i = end
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)


def frame(body):
    """Wire bytes of one frame: COBS(body + CRC-32 little-endian) + 0x00."""
    out = cobs_encode(body + struct.pack("<I", crc32(body)))
    out.append(0)
    return out


def unframe(encoded):
    """Body of a received frame (delimiter stripped), or an error code (int) if it is not a valid frame."""
    raw = cobs_decode(encoded)
    if raw is None or len(raw) < 5:
        return E_FRAMING
    body = raw[:-4]
    if struct.unpack("<I", raw[-4:])[0] != crc32(body):
        return E_CRC
    return body


def error_body(tag, request_type, code, message):
    return struct.pack("<BBBB", T_ERROR, tag, request_type, code) + message
