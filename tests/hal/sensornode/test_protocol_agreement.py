"""The node's protocol constants (firmware/protocol.py, MicroPython) and the host's (hal/sensornode/protocol.py)
agree: protocol version, frame types, error codes, the DATA header layout. The two files cannot share code (the
firmware runs on the RP2040), so this test is what keeps them one protocol."""

from __future__ import annotations

import importlib.util
import struct

import pytest

from hal.sensornode import protocol as host

from tests.paths import ROOT

FIRMWARE = ROOT / "firmware" / "protocol.py"
SHARED = ["PROTO_VERSION", "T_DATA", "T_IDENTIFY", "T_START", "T_STOP", "T_SET_RATE", "T_PING", "T_ERROR", "REPLY",
          "E_UNKNOWN", "E_LENGTH", "E_CRC", "E_ARG", "E_FRAMING"]


@pytest.fixture(scope="module")
def node():
    spec = importlib.util.spec_from_file_location("firmware_protocol_agreement", FIRMWARE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", SHARED)
def test_constant_agrees(node, name: str) -> None:
    assert getattr(node, name) == getattr(host, name), f"{name}: firmware {getattr(node, name)!r}, host " \
                                                         f"{getattr(host, name)!r}"


def test_every_upper_case_integer_the_two_share_is_listed(node) -> None:
    """A constant added on both sides with the same name is checked too (not forgotten in SHARED)."""
    both = {n for n in dir(node) if n.isupper() and isinstance(getattr(node, n), int)} & {
        n for n in dir(host) if n.isupper() and isinstance(getattr(host, n), int)}
    assert both <= set(SHARED) | {"DATA_HDR_LEN"}, sorted(both - set(SHARED))


def test_data_header_layout_agrees(node) -> None:
    assert node.DATA_HDR == host.DATA_HDR.format
    assert struct.calcsize(node.DATA_HDR) == node.DATA_HDR_LEN == host.DATA_HDR.size


def test_a_command_the_node_accepts_fits_what_the_host_accepts(node) -> None:
    assert node.MAX_CMD <= host.MAX_FRAME
