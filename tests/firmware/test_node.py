"""The firmware's node (firmware/node.py, unchanged) on the emulated board: replies, overruns, errors, watchdog.

The node is driven through an in-memory byte pipe here (its `link` argument); tests/sensornode drives it over a pty.
"""

from __future__ import annotations

from typing import Any

import pytest
import serial

from hal.emulated.micropython.runner import EmulatedNode, FirmwareImage, firmware_dir
from hal.emulated.micropython.shim import WDT_RESET, AnalogFrontEnd, Board
from hal.emulated.plant import Plant
from hal.sensornode import protocol as H
from tests.firmware.vectors import frame_vectors

pytestmark = pytest.mark.slow  # the firmware in the MicroPython emulator on a pty

UID = bytes.fromhex("e6614c311b2a3c2d")


class MemoryLink:
    """A byte pipe: what the test writes is what the node reads; what the node writes is collected."""

    def __init__(self) -> None:
        self.inbox = bytearray()
        self.out = bytearray()

    def read(self) -> bytes | None:
        data, self.inbox = bytes(self.inbox), bytearray()
        return data or None

    def write(self, data: bytes) -> None:
        self.out += data

    def frames(self) -> list[bytes]:
        """Complete wire frames written so far (each with its delimiter), consumed."""
        parts = bytes(self.out).split(b"\x00")
        self.out = bytearray(parts[-1])
        return [p + b"\x00" for p in parts[:-1] if p]


@pytest.fixture
def node() -> Any:
    board = Board(AnalogFrontEnd(Plant(seed=3)), UID, link=None)
    image = FirmwareImage(firmware_dir(), board.modules())
    cfg = image.load("config")
    machine = board.modules()["machine"]
    adcs = [machine.ADC(c) for c in cfg.ADC_CHANNELS]
    n = image.load("node").Node(MemoryLink(), adcs, cfg.ADC_CHANNELS, machine.unique_id(), 1, None, cfg)
    yield n
    n._stop_timer()
    board.stop_timers()


def ask(node: Any, wire: bytes) -> list[bytes]:
    node.link.inbox += wire
    node.service_link()
    return node.link.frames()


def test_identify_reply_matches_the_vector(node: Any) -> None:
    (reply,) = ask(node, frame_vectors()["identify-request"][1])
    assert reply == frame_vectors()["identify-reply"][1]


def test_set_rate_and_start_replies_match_the_vectors(node: Any) -> None:
    (r1,) = ask(node, frame_vectors()["set-rate-request"][1])
    assert r1 == frame_vectors()["set-rate-reply"][1]
    replies = ask(node, frame_vectors()["start-request"][1])
    node._stop_timer()
    assert replies[0] == frame_vectors()["start-reply"][1]
    assert node.rate == 6400 and node.mask == 7 and node.n == 256


def test_stop_reply_matches_the_vector(node: Any) -> None:
    node.seq, node.dropped_total = 42, 5
    (reply,) = ask(node, frame_vectors()["stop-request"][1])
    assert reply == frame_vectors()["stop-reply"][1]


def test_unknown_command_is_answered_with_an_error(node: Any) -> None:
    (reply,) = ask(node, frame_vectors()["unknown-request"][1])
    assert reply == frame_vectors()["error-reply"][1]
    assert node.rx_errors == 1


def test_ping_reply_fields(node: Any) -> None:
    node.seq, node.dropped_total, node.frames_sent = 42, 5, 42
    (reply,) = ask(node, frame_vectors()["ping-request"][1])
    f = list(H.Decoder().feed(reply))[0]
    assert f.type == H.T_PING | H.REPLY and f.tag == 5
    assert (f.fields["token"], f.fields["seq"], f.fields["dropped_total"], f.fields["frames_sent"]) == \
        (0xDEADBEEF, 42, 5, 42)


@pytest.mark.parametrize("wire,code,tag", [
    (H.encode_frame(bytes([H.T_SET_RATE, 9, 1, 2])), H.E_LENGTH, 9),  # 2 argument bytes, 4 expected
    (H.command(H.T_SET_RATE, 10, 10**6), H.E_ARG, 10),  # above MAX_RATE_HZ
    (H.command(H.T_SET_RATE, 11, 0), H.E_ARG, 11),
    (H.command(H.T_START, 12, 0x10, 256), H.E_ARG, 12),  # channel 4 not wired in config.py
    (H.command(H.T_START, 13, 0x01, 0), H.E_ARG, 13),  # empty block
    (H.command(H.T_START, 14, 0x01, 5000), H.E_ARG, 14),  # block too long
    (H.command(H.T_IDENTIFY, 15)[:-2] + b"\x01\x00", H.E_CRC, 0),  # last CRC byte changed
    (b"\x07\x10\x01\x00", H.E_FRAMING, 0),  # COBS group runs past the frame
    (b"\x05" * 100 + b"\x00", H.E_FRAMING, 0),  # longer than 64 bytes
])
def test_every_bad_command_is_answered_and_counted(node: Any, wire: bytes, code: int, tag: int) -> None:
    replies = ask(node, wire)
    assert len(replies) == 1
    err = list(H.Decoder().feed(replies[0]))[0]
    assert isinstance(err, H.ErrorFrame)
    assert (err.code, err.tag) == (code, tag)
    assert node.rx_errors == 1
    assert not node.streaming


def test_a_good_command_after_noise_is_answered(node: Any) -> None:
    replies = ask(node, b"\x13\x37\xff\xfe" + b"\x00" + frame_vectors()["identify-request"][1])
    assert replies[-1] == frame_vectors()["identify-reply"][1]


def _data(frames: list[bytes]) -> list[H.DataFrame]:
    d = H.Decoder()
    return [f for w in frames for f in d.feed(w) if isinstance(f, H.DataFrame)]


def test_ring_overrun_is_counted_and_reported_in_the_next_frame(node: Any) -> None:
    """The sampler (the timer callback, called here tick by tick) fills the ring while nothing is sent."""
    node.n, node.mask = 8, 0b011
    node._setup_ring()
    ticks = node.slots * node.n
    for _ in range(ticks + 13):  # 13 samples more than the ring holds
        node._tick(None)
    assert node.lost == 13
    while node.send_ready():
        pass
    for _ in range(node.n):
        node._tick(None)
    node.send_ready()
    frames = _data(node.link.frames())
    assert len(frames) == node.slots + 1
    assert [f.dropped for f in frames] == [0] * node.slots + [13]
    assert [f.seq for f in frames] == list(range(node.slots + 1))
    assert all(f.samples.shape == (8, 2) and f.mask == 0b011 for f in frames)
    assert node.dropped_total == 13


def test_samples_are_the_plant_on_the_adc_scale(node: Any) -> None:
    """Channel 0 reads the plant's axis 0 through a 10 mV/(m/s²) sensor at 1.65 V on a 12-bit, 3.3 V ADC."""
    node.n, node.mask = 64, 0b001
    node._setup_ring()
    for _ in range(64):
        node._tick(None)
    node.send_ready()
    (f,) = _data(node.link.frames())
    s = f.samples[:, 0].astype(int)
    assert (s & 0xF == ((s + 32768) >> 12) & 0xF).all()  # read_u16 = raw12 << 4 | raw12 >> 8
    volts = (s + 32768) * 3.3 / 65536
    accel = (volts - 1.65) / 0.010
    assert 0.25 < abs(accel).max() < 2.0  # plant: 0.35 m/s² imbalance + 0.15 misalignment + noise (0.08 m/s² LSB)


def test_watchdog_resets_a_hung_node(tmp_path: Any) -> None:
    """A hung main loop stops feeding machine.WDT; the board reboots and says so in IDENTIFY."""
    with EmulatedNode(Plant(seed=4), UID, tmp_path) as emu:
        with serial.Serial(emu.port, timeout=0.2) as ser:
            dec = H.Decoder()

            def identify(tag: int) -> H.Identity | None:
                ser.write(H.command(H.T_IDENTIFY, tag))
                for _ in range(10):
                    for f in dec.feed(ser.read(4096)):
                        if isinstance(f, H.Identity) and f.tag == tag:
                            return f
                return None

            first = identify(1)
            assert first is not None and first.reset_cause == 1
            emu.hang()
            # a hung node does not answer; an answer to this very request can only come from the rebooted board
            # (on a loaded machine the 2 s watchdog may fire while we are still listening)
            reply = identify(2)
            assert reply is None or reply.reset_cause == WDT_RESET, "a hung node answered"
            for tag in range(3, 60):  # the 2 s watchdog brings it back
                if reply is not None:
                    break
                reply = identify(tag)
            assert reply is not None and reply.reset_cause == WDT_RESET
            assert (emu.watchdog_resets, emu.boots, emu.crashes) == (1, 2, 0)


def test_firmware_may_import_only_what_micropython_has(tmp_path: Any) -> None:
    (tmp_path / "main.py").write_text("import os\n")
    board = Board(AnalogFrontEnd(Plant()), UID, link=None)
    with pytest.raises(ImportError, match="no module named 'os' on the emulated RP2040"):
        FirmwareImage(tmp_path, board.modules()).load("main")
