"""The node's codec (firmware/protocol.py, run here on CPython) against the PROTOCOL.md test vectors."""

from __future__ import annotations

import importlib.util
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.firmware.vectors import cobs_vectors, crc_vectors, frame_vectors
from tests.paths import ROOT

FIRMWARE = ROOT / "firmware"


def _load_protocol(software_crc: bool = False) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("firmware_protocol", FIRMWARE / "protocol.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if software_crc:
        mod._crc32 = None  # the fallback for ports built without binascii.crc32
    return mod


@pytest.fixture(params=[False, True], ids=["binascii-crc", "software-crc"])
def fw(request: pytest.FixtureRequest) -> types.ModuleType:
    return _load_protocol(request.param)


def test_vectors_are_there() -> None:
    assert len(frame_vectors()) >= 14 and len(cobs_vectors()) >= 8 and crc_vectors()


def test_crc_check_value(fw: types.ModuleType) -> None:
    for data, crc in crc_vectors():
        assert fw.crc32(data) == crc


@pytest.mark.parametrize("data,encoded", cobs_vectors(), ids=lambda v: v[:6].hex() if isinstance(v, bytes) else v)
def test_cobs_vectors(data: bytes, encoded: bytes) -> None:
    fw = _load_protocol()
    assert bytes(fw.cobs_encode(data)) == encoded
    assert fw.cobs_decode(encoded) == data


def test_cobs_decoder_accepts_the_short_form_of_a_254_run() -> None:
    fw = _load_protocol()
    assert fw.cobs_decode(b"\xff" + bytes(range(1, 255))) == bytes(range(1, 255))


@pytest.mark.parametrize("name", sorted(frame_vectors()))
def test_frame_vectors(name: str, fw: types.ModuleType) -> None:
    body, wire = frame_vectors()[name]
    assert bytes(fw.frame(body)) == wire
    assert fw.unframe(wire[:-1]) == body


def test_unframe_reports_bad_crc_and_bad_cobs() -> None:
    fw = _load_protocol()
    body, wire = frame_vectors()["identify-request"]
    bad = bytearray(wire[:-1])
    bad[2] ^= 0x40
    assert fw.unframe(bytes(bad)) == fw.E_CRC
    assert fw.unframe(b"\x09\x01") == fw.E_FRAMING  # group longer than the frame
    assert fw.unframe(b"\x02\x01") == fw.E_FRAMING  # too short for a CRC


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=700))
def test_cobs_round_trip_and_no_zero(data: bytes) -> None:
    fw = _load_protocol()
    enc = bytes(fw.cobs_encode(data))
    assert 0 not in enc
    assert fw.cobs_decode(enc) == data
    assert len(enc) <= len(data) + len(data) // 254 + 2
