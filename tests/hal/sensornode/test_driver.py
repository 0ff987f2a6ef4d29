"""End to end: the firmware source in the emulator -> pty -> "sensornode" driver -> Blocks -> windows -> features.

Real parts throughout: the unchanged firmware/*.py on the shim, a kernel pty pair per plug-in, pyserial on the
host end, the agent's Windower and rms_peak kernel. Loops are bounded by block counts, never by time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.signal import rms_peak
from agent.windows import Windower
from hal.emulated.micropython.runner import EmulatedNode
from hal.emulated.plant import Plant
from hal.sensornode import protocol as P
from hal.sensornode.driver import SensorNode
from hal.sources import HalContext, open_source
from hal.types import Block, Quality

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]  # the driver against the emulated firmware on a pty

BOARD = "e6614c311b2a3c2d"
# the rp2 timer runs whole microseconds (1_000_000 // rate): what the node really samples at, and reports
REAL_3200 = 1e9 / 312_000  # 3205.128 Hz
REAL_6400 = 1e9 / 156_000  # 6410.256 Hz


def expected_rms(p: Plant) -> float:
    return math.sqrt(p.imbalance_ms2 ** 2 / 2 + p.misalignment_ms2 ** 2 / 2 + p.noise_ms2 ** 2)


@pytest.fixture
def plant() -> Plant:
    return Plant(seed=11)


@pytest.fixture
def emu(plant: Plant, tmp_path: Path) -> Iterator[EmulatedNode]:
    node = EmulatedNode(plant, BOARD, tmp_path)
    node.plug()
    yield node
    node.close()


def make_driver(tmp_path: Path, plant: Plant, **options: Any) -> SensorNode:
    opts = {"port": str(tmp_path / "ttyNODE*"), "board_id": BOARD, "block_size": 256, "timeout_s": 1.0}
    opts.update(options)
    drv = open_source("sensornode", "spindle", opts, HalContext(emulate=False, plant=plant))
    assert isinstance(drv, SensorNode)
    return drv


@pytest.fixture
def driver(emu: EmulatedNode, tmp_path: Path, plant: Plant) -> Iterator[SensorNode]:
    drv = make_driver(tmp_path, plant, channels=[0, 1, 2], axes=["x", "y", "z"])
    drv.open()
    yield drv
    drv.close()


def read(drv: SensorNode, blocks: int, max_calls: int = 400) -> list[Block]:
    out: list[Block] = []
    for _ in range(max_calls):
        b = drv.read_block(0.5)
        if b is not None:
            out.append(b)
            if len(out) == blocks:
                break
    assert len(out) == blocks, f"got {len(out)} of {blocks} blocks; counters {drv.counters}"
    return out


def features(blocks: list[Block], size: int = 1024) -> list[tuple[float, ...]]:
    """RMS per axis of every complete window (the pipeline's windowing and kernel)."""
    w = Windower(size, size)
    out = []
    for b in blocks:
        for win in w.push(b):
            out.append(tuple(rms_peak(np.ascontiguousarray(win.samples[:, k]))[0]
                             for k in range(win.samples.shape[1])))
    return out


def test_streams_the_plant_in_engineering_units_into_features(driver: SensorNode, plant: Plant) -> None:
    blocks = read(driver, 16)
    assert driver.identity is not None and driver.identity.board_id == BOARD
    assert all(b.rate_hz == REAL_3200 and b.samples.shape == (256, 3) and b.axes == ("x", "y", "z") for b in blocks)
    assert driver.rate_hz == REAL_3200 and driver.identity.proto == 2
    assert all(b.unit == "m/s2" and b.quality is Quality.GOOD for b in blocks)
    assert [b.gap for b in blocks] == [0] * 16
    steps = np.diff([b.t0_ns for b in blocks])
    assert np.all(np.abs(steps - 256 * 312_000) < 1_000)  # 256 samples 312 us apart (not 80 ms: 3200 Hz nominal)
    rms = features(blocks)
    assert len(rms) == 4
    for row in rms:
        for axis_rms in row:
            assert axis_rms == pytest.approx(expected_rms(plant), rel=0.08)
    c = driver.counters
    assert c["crc_errors"] == c["lost_frames"] == c["lost_samples"] == c["link_faults"] == 0


def test_line_noise_costs_only_the_hit_frames_and_shows_as_a_gap(driver: SensorNode, emu: EmulatedNode,
                                                                   plant: Plant) -> None:
    read(driver, 3)
    emu.link.corrupt_next(2)  # one bit pattern flipped in each of the next two frames
    emu.link.inject(b"\x13\x37\xde\xad" * 8)  # garbage between frames: costs the frame it is glued to
    blocks = read(driver, 20)
    c = driver.counters
    assert c["crc_errors"] + c["cobs_errors"] + c["malformed_frames"] + c["short_frames"] >= 2
    assert c["lost_frames"] >= 2
    gaps = [b.gap for b in blocks]
    assert sum(gaps) == c["lost_samples"] == c["lost_frames"] * 256
    rms = features(blocks)  # windows restart after each gap and carry on
    assert rms and all(r == pytest.approx(expected_rms(plant), rel=0.08) for row in rms for r in row)


def test_rate_change_while_streaming(driver: SensorNode, plant: Plant) -> None:
    read(driver, 2)
    driver.set_rate(6400)
    assert driver.rate_hz == REAL_6400
    blocks = read(driver, 24)
    new = [b for b in blocks if b.rate_hz == REAL_6400]
    assert len(new) >= 12 and blocks[-1].rate_hz == REAL_6400
    assert all(b.rate_hz in (REAL_3200, REAL_6400) for b in blocks)
    first = blocks.index(new[0])
    assert all(b.rate_hz == REAL_6400 for b in blocks[first:])  # no old-rate block after the change
    steps = np.diff([b.t0_ns for b in new])
    assert np.all(np.abs(steps - 256 * 156_000) < 1_000)
    rms = features(new)
    assert rms and all(r == pytest.approx(expected_rms(plant), rel=0.08) for row in rms for r in row)
    with pytest.raises(ValueError):
        driver.set_rate(10**6)


def test_unplug_and_replug_reconnects_by_board_id_on_the_new_port(driver: SensorNode, emu: EmulatedNode,
                                                                  tmp_path: Path) -> None:
    before = read(driver, 3)
    assert driver.port == str(tmp_path / "ttyNODE0")
    emu.unplug()
    nones = 0
    for _ in range(100):  # never raises; returns None once the queued blocks are gone
        if driver.read_block(0.2) is None:
            nones += 1
            if nones >= 3:
                break
    assert nones >= 3
    assert driver.counters["link_faults"] >= 1
    port = emu.plug()  # re-enumerates under a new name, as USB does
    assert port.endswith("ttyNODE1")
    after = read(driver, 6)
    assert driver.port == port
    assert driver.counters["reconnects"] == 1
    assert after[0].gap > 0  # the outage is reported, sized from the host clock
    assert after[0].t0_ns > before[-1].t0_ns + before[-1].duration_ns
    assert [b.gap for b in after[1:]] == [0] * 5


def test_board_id_picks_the_right_node_among_several(plant: Plant, tmp_path: Path) -> None:
    other = EmulatedNode(plant, "0102030405060708", tmp_path, prefix="ttyNODEa")  # sorts first
    mine = EmulatedNode(plant, BOARD, tmp_path, prefix="ttyNODEb")
    with other, mine:
        drv = make_driver(tmp_path, plant)
        drv.open()
        try:
            read(drv, 2)
            assert drv.port == mine.port and drv.identity.board_id == BOARD
            assert drv.counters["identify_mismatches"] == 1
        finally:
            drv.close()
        absent = make_driver(tmp_path, plant, board_id="ffffffffffffffff", timeout_s=0.5)
        absent.open()
        try:
            assert all(absent.read_block(0.1) is None for _ in range(5))
            assert absent.counters["identify_mismatches"] >= 2
        finally:
            absent.close()


def test_a_node_reset_by_its_watchdog_is_restarted_by_the_driver(driver: SensorNode, emu: EmulatedNode) -> None:
    read(driver, 2)
    emu.hang()
    blocks = read(driver, 4, max_calls=200)
    assert emu.watchdog_resets == 1
    assert driver.counters["stalls"] >= 1 or driver.counters["link_faults"] >= 1
    assert any(b.gap > 0 for b in blocks)
    assert driver.identity.reset_cause == 3  # the node said why it rebooted


def test_gap_accounting_from_sequence_dropped_and_device_time(tmp_path: Path, plant: Plant) -> None:
    drv = make_driver(tmp_path, plant)  # not opened: its frame -> Block conversion only
    drv._streaming = True

    def frame(seq: int, t0: int, dropped: int = 0, n: int = 4, period_ns: int = 1_000_000) -> P.DataFrame:
        return P.DataFrame(1, n, seq, t0 % (1 << 30), period_ns, dropped, np.zeros((n, 1), dtype=np.int16))

    t = (1 << 30) - 6000  # device clock about to wrap
    b0 = drv._to_block(frame(0, t), 10**18)
    b1 = drv._to_block(frame(1, t + 4000), 10**18 + 4_000_000)  # wraps: still contiguous
    b3 = drv._to_block(frame(3, t + 12000), 10**18 + 12_000_000)  # frame 2 lost on the link
    b4 = drv._to_block(frame(4, t + 21000, dropped=5), 10**18 + 21_000_000)  # node overrun: 5 samples
    b5 = drv._to_block(frame(5, t + 35000), 10**18 + 35_000_000)  # 10 samples never taken, nothing else says so
    assert [b.gap for b in (b0, b1, b3, b4, b5)] == [0, 0, 4, 5, 10]
    assert b1.t0_ns - b0.t0_ns == 4_000_000 and b5.t0_ns - b0.t0_ns == 35_000_000
    c = drv.counters
    assert (c["lost_frames"], c["node_overruns"], c["time_gaps"], c["lost_samples"]) == (1, 5, 1, 19)
    assert b0.samples.shape == (4,) and b0.samples[0] == pytest.approx((1.65 - 1.65) / 0.01)


def test_clipped_samples_are_uncertain(tmp_path: Path, plant: Plant) -> None:
    drv = make_driver(tmp_path, plant)
    f = P.DataFrame(1, 2, 0, 0, 1_000_000, 0, np.array([[0], [32767]], dtype=np.int16))
    assert drv._to_block(f, 10**18).quality is Quality.UNCERTAIN


@pytest.mark.parametrize("what", ["no port", "regular file", "/dev/null", "silent pty"])
def test_read_block_never_raises_without_a_node(tmp_path: Path, plant: Plant, what: str) -> None:
    import os

    keep = []
    if what == "regular file":
        (tmp_path / "ttyX0").write_bytes(b"\x00" * 10)
    elif what == "/dev/null":
        (tmp_path / "ttyX0").symlink_to("/dev/null")
    elif what == "silent pty":  # a serial device that never answers
        master, slave = os.openpty()
        keep = [master, slave]
        (tmp_path / "ttyX0").symlink_to(os.ttyname(slave))
    drv = make_driver(tmp_path, plant, port=str(tmp_path / "ttyX*"), timeout_s=0.2)
    try:
        drv.open()
        assert all(drv.read_block(0.05) is None for _ in range(5))
        assert drv.identity is None
    finally:
        drv.close()
        for fd in keep:
            os.close(fd)
    drv.close()  # idempotent


def test_emulate_boots_the_firmware_through_the_backend_row_and_the_driver_only_opens_its_port(plant: Plant) -> None:
    from hal.emulated.sensornode import EmulatedNodePorts

    ctx = HalContext(emulate=True, plant=plant)
    drv = open_source("sensornode", "pump", {"rate_hz": 3200, "block_size": 320}, ctx)
    assert ctx.opened("sensornode.emulator.") == {}, "constructing a driver boots nothing"
    drv.open()
    try:
        ports = ctx.lookup("sensornode:pump")
        assert isinstance(ports, EmulatedNodePorts) and drv.ports is ports
        node = ctx.lookup("sensornode.emulator.pump")
        assert node is ports.node and node.frontend is not None
        assert drv.port_pattern == str(node.link_dir / "ttyNODE*") and drv.board_id == node.board_id
        blocks = read(drv, 5)
        assert drv.identity.board_id == node.board_id
        assert all(b.samples.shape == (320,) and b.axes == ("x",) for b in blocks)
        assert rms_peak(np.concatenate([b.samples for b in blocks]))[0] == pytest.approx(expected_rms(plant),
                                                                                        rel=0.08)
    finally:
        drv.close()
    try:
        assert node.board is None and node.port is None, "closing the driver powers its emulated node off"
        assert ports.node is None
    finally:
        ctx.close()


def test_a_real_context_hands_the_driver_its_configured_port_and_boots_nothing(tmp_path: Path, plant: Plant) -> None:
    from hal.sensornode.driver import NodePorts

    ctx = HalContext(emulate=False, plant=plant)
    drv = open_source("sensornode", "pump", {"port": str(tmp_path / "ttyNONE*"), "board_id": BOARD,
                                             "timeout_s": 0.2}, ctx)
    drv.open()  # no node there: logged, retried later, never raised
    try:
        assert type(drv.ports) is NodePorts
        assert drv.port_pattern == str(tmp_path / "ttyNONE*") and drv.board_id == BOARD
        assert ctx.opened("sensornode.emulator.") == {}
        assert drv.read_block(0.1) is None
    finally:
        drv.close()
        ctx.close()


def test_options_are_validated() -> None:
    from hal.sources import validate_driver_options

    _, errors = validate_driver_options("sensornode", {"board_id": "xyz", "channels": [2, 0], "rate_hz": 0,
                                                       "bogus": 1})
    keys = {k for k, _ in errors}
    assert keys == {"board_id", "channels", "rate_hz", "bogus"}


def test_a_node_left_streaming_by_a_killed_agent_is_taken_over(emu: EmulatedNode, tmp_path: Path,
                                                                plant: Plant) -> None:
    first = make_driver(tmp_path, plant)
    first.open()
    read(first, 2)
    first._ser.close()  # the agent died: no STOP was sent, the node keeps streaming
    second = make_driver(tmp_path, plant, rate_hz=6400, block_size=128)
    second.open()
    try:
        blocks = read(second, 6)
        assert all(b.rate_hz == REAL_6400 and len(b) == 128 for b in blocks)  # nothing from the old stream
        assert [b.gap for b in blocks] == [0] * 6
    finally:
        second.close()


def test_cli_lists_and_reads_nodes(emu: EmulatedNode, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from agent.cli import main

    assert main(["sensornode", "list", "--port", str(tmp_path / "ttyNODE*")]) == 0
    out = capsys.readouterr().out
    assert f"board {BOARD}" in out and "channels [0, 1, 2]" in out and "last reset: power-on" in out
    assert main(["sensornode", "read", "--port", str(tmp_path / "ttyNODE*"), "--board-id", BOARD,
                 "--channels", "0,2", "--blocks", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("256 samples @ 3205.13 Hz gap 0 good  rms ch0=") == 2  # 3200 Hz asked, 312 us and "ch2=" in out
    assert main(["sensornode", "list", "--port", str(tmp_path / "none*")]) == 1
