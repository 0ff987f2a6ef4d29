"""Reads the test vectors of firmware/PROTOCOL.md, shared by the node-side and host-side tests."""

from __future__ import annotations

import re

from tests.paths import ROOT

PROTOCOL_MD = ROOT / "firmware" / "PROTOCOL.md"


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def frame_vectors() -> dict[str, tuple[bytes, bytes]]:
    """name -> (body, wire) for every `vector:` entry."""
    text = PROTOCOL_MD.read_text()
    out = {}
    for m in re.finditer(r"^vector: (\S+)\nbody: ([0-9a-f ]+)\nwire: ([0-9a-f ]+)$", text, re.M):
        out[m.group(1)] = (_hex(m.group(2)), _hex(m.group(3)))
    return out


def _expand(spec: str) -> bytes:
    spec = spec.strip()
    if spec == '""':
        return b""
    out = bytearray()
    for tok in spec.split():
        if ".." in tok:
            a, b = tok.split("..")
            out += bytes(range(int(a, 16), int(b, 16) + 1))
        elif re.fullmatch(r"[0-9a-f]{2}", tok):
            out.append(int(tok, 16))
    return bytes(out)


def cobs_vectors() -> list[tuple[bytes, bytes]]:
    text = PROTOCOL_MD.read_text()
    out = []
    for m in re.finditer(r"^cobs: (.+?)\s+-> (.+)$", text, re.M):
        data = re.sub(r"\(.*?\)", "", m.group(1))
        out.append((_expand(data), _expand(m.group(2))))
    return out


def crc_vectors() -> list[tuple[bytes, int]]:
    text = PROTOCOL_MD.read_text()
    pattern = r'^crc32: "(.*)" -> ([0-9a-f]{8})$'
    return [(m.group(1).encode(), int(m.group(2), 16)) for m in re.finditer(pattern, text, re.M)]
