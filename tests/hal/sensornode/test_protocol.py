"""Host codec (hal/sensornode/protocol.py): PROTOCOL.md vectors, and a decoder that survives any byte stream."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal.sensornode import protocol as P
from tests.firmware.vectors import cobs_vectors, crc_vectors, frame_vectors

VECTORS = frame_vectors()


def test_crc_check_value() -> None:
    for data, crc in crc_vectors():
        assert P.crc32(data) == crc


@pytest.mark.parametrize("data,encoded", cobs_vectors(), ids=lambda v: v[:6].hex() if isinstance(v, bytes) else v)
def test_cobs_vectors(data: bytes, encoded: bytes) -> None:
    assert P.cobs_encode(data) == encoded
    assert P.cobs_decode(encoded) == data


def test_cobs_short_form_and_errors() -> None:
    assert P.cobs_decode(b"\xff" + bytes(range(1, 255))) == bytes(range(1, 255))
    with pytest.raises(P.CobsError):
        P.cobs_decode(b"\x05\x01")
    with pytest.raises(P.CobsError):
        P.cobs_decode(b"\x02\x00")


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_frame_vectors_encode_and_decode(name: str) -> None:
    body, wire = VECTORS[name]
    assert P.encode_frame(body) == wire
    if body[0] & P.REPLY or body[0] in (P.T_DATA, P.T_ERROR):  # what the host receives
        (frame,) = P.Decoder().feed(wire)
        want = P.parse_body(body)
        if isinstance(want, P.DataFrame):
            assert (frame.mask, frame.n, frame.seq, frame.t0_us, frame.rate_hz, frame.dropped) == \
                (want.mask, want.n, want.seq, want.t0_us, want.rate_hz, want.dropped)
            assert np.array_equal(frame.samples, want.samples)
        else:
            assert frame == want


def test_commands_match_the_vectors() -> None:
    assert P.command(P.T_IDENTIFY, 1) == VECTORS["identify-request"][1]
    assert P.command(P.T_START, 2, 0x07, 256) == VECTORS["start-request"][1]
    assert P.command(P.T_STOP, 3) == VECTORS["stop-request"][1]
    assert P.command(P.T_SET_RATE, 4, 6400) == VECTORS["set-rate-request"][1]
    assert P.command(P.T_PING, 5, 0xDEADBEEF) == VECTORS["ping-request"][1]
    assert P.command(0x55, 6) == VECTORS["unknown-request"][1]


def test_decoded_vector_fields() -> None:
    ident = P.parse_body(VECTORS["identify-reply"][0])
    assert isinstance(ident, P.Identity)
    assert (ident.board_id, ident.proto, ident.version, ident.available_channels, ident.period_ns,
            ident.max_rate_hz, ident.ticks_bits, ident.name) == ("e6614c311b2a3c2d", 2, (1, 1, 0), (0, 1, 2), 312_000,
                                                                 25600, 30, "edge-agent sensornode")
    # the rp2 timer runs whole microseconds: 3200 Hz requested is 312 us, really 3205.128 Hz
    assert ident.rate_hz == pytest.approx(3205.128, abs=1e-3)
    d = P.parse_body(VECTORS["data-2ch-dropped"][0])
    assert (d.channels, d.n, d.seq, d.t0_us, d.period_ns, d.dropped) == ((0, 2), 2, 8, (1 << 30) - 24, 39_000, 3)
    assert d.rate_hz == pytest.approx(25641.03, abs=0.01)  # 25600 Hz requested: 39 us
    assert d.samples.tolist() == [[-32768, 32767], [0, 16]]
    assert P.parse_body(VECTORS["data-1ch"][0]).samples[:, 0].tolist() == [0, 1, -1, 256]
    start = P.parse_body(VECTORS["start-reply"][0])
    assert start.fields == {"mask": 7, "n": 256, "period_ns": 156_000, "slots": 21, "seq": 0}  # 6400 Hz asked
    err = P.parse_body(VECTORS["error-reply"][0])
    assert (err.tag, err.request_type, err.code, err.message) == (6, 0x55, P.E_UNKNOWN, "unknown command")


@pytest.mark.parametrize("body,why", [
    (struct.pack("<BBHIIII", 1, 1, 4, 0, 0, 3200, 0) + b"\x00" * 6, "payload one sample short"),
    (struct.pack("<BBHIIII", 1, 0, 0, 0, 0, 3200, 0), "no channels"),
    (struct.pack("<BBHIIII", 1, 1, 1, 0, 0, 0, 0) + b"\x00\x00", "period 0"),
    (b"\x01\x01", "truncated header"),
    (b"\x93\x04\x00", "reply too short"),
    (b"\x42\x00\x00", "unknown type"),
])
def test_valid_crc_but_wrong_layout_is_counted_as_malformed(body: bytes, why: str) -> None:
    dec = P.Decoder()
    assert list(dec.feed(P.encode_frame(body))) == []
    assert dec.stats.malformed == 1, why


def test_oversize_frame_is_skipped_up_to_the_next_delimiter() -> None:
    dec = P.Decoder(max_frame=100)
    good = P.encode_frame(VECTORS["set-rate-reply"][0])
    frames = list(dec.feed(b"\x01" * 150 + b"\x01" * 50 + b"\x00" + good))
    assert len(frames) == 1 and dec.stats.oversize == 1 and dec.stats.discarded_bytes == 200


# ---- property tests: corruption, dropped and inserted bytes ---------------------------------------------------------

@st.composite
def data_frames(draw: st.DrawFn) -> list[bytes]:
    count = draw(st.integers(1, 8))
    bodies = []
    for seq in range(count):
        mask = draw(st.sampled_from([0b1, 0b11, 0b101, 0b111]))
        n = draw(st.integers(1, 24))
        nch = bin(mask).count("1")
        samples = draw(st.lists(st.integers(-32768, 32767), min_size=n * nch, max_size=n * nch))
        hdr = struct.pack("<BBHIIII", P.T_DATA, mask, n, seq, draw(st.integers(0, (1 << 30) - 1)),
                          draw(st.sampled_from([3200, 6400, 25600])), draw(st.integers(0, 5)))
        bodies.append(hdr + struct.pack(f"<{n * nch}h", *samples))
    return bodies


mutations = st.dictionaries(st.integers(0, 10_000), st.one_of(
    st.tuples(st.just("flip"), st.integers(1, 255)),
    st.tuples(st.just("drop"), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 255)),
), max_size=6)


@settings(max_examples=150, deadline=None)
@given(data_frames(), mutations, st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_decoder_survives_corruption_and_recovers_on_the_next_frame(bodies: list[bytes], muts: dict,
                                                                    chunks: list[int]) -> None:
    wires = [P.encode_frame(b) for b in bodies]
    stream = bytearray(b"".join(wires))
    spans, pos = [], 0
    for w in wires:
        spans.append((pos, pos + len(w) - 1))  # first byte .. delimiter
        pos += len(w)
    muts = {p % len(stream): op for p, op in muts.items()}
    for p in sorted(muts, reverse=True):  # positions refer to the clean stream
        kind, v = muts[p]
        if kind == "flip":
            stream[p] ^= v
        elif kind == "drop":
            del stream[p]
        else:
            stream.insert(p, v)
    # a frame survives if nothing touched it or the delimiter before it
    intact = [k for k, (a, b) in enumerate(spans) if not any(a - 1 <= p <= b for p in muts)]

    dec = P.Decoder()
    got: list[P.Frame] = []
    i, c = 0, 0
    while i < len(stream):  # fed in arbitrary chunks
        step = chunks[c % len(chunks)]
        got += list(dec.feed(bytes(stream[i:i + step])))
        i += step
        c += 1
    got += list(dec.feed(b"\x00"))  # a final delimiter flushes a trailing fragment

    originals = [P.parse_body(b) for b in bodies]
    for f in got:  # nothing is emitted that was not sent: no frame with a bad CRC gets through
        assert isinstance(f, P.DataFrame)
        o = originals[f.seq]
        assert (f.mask, f.n, f.t0_us, f.rate_hz, f.dropped) == (o.mask, o.n, o.t0_us, o.rate_hz, o.dropped)
        assert np.array_equal(f.samples, o.samples)
    seqs = [f.seq for f in got]
    assert seqs == sorted(seqs)
    assert set(intact) <= set(seqs)  # every untouched frame is recovered
    lost = len(bodies) - len(set(seqs))
    assert (dec.stats.bad_frames > 0) or lost == 0  # a lost frame is always counted as a bad one


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 97))
def test_decoder_never_raises_on_garbage(noise: bytes, chunk: int) -> None:
    dec = P.Decoder(max_frame=512)
    for i in range(0, len(noise), chunk):
        for f in dec.feed(noise[i:i + chunk]):
            assert isinstance(f, (P.DataFrame, P.Identity, P.Reply, P.ErrorFrame))
    assert dec.stats.bytes == len(noise)
    good = P.encode_frame(VECTORS["data-1ch"][0])
    frames = list(dec.feed(b"\x00" + good))  # and the next good frame after a delimiter comes through
    assert len(frames) == 1 and frames[0].seq == 7
