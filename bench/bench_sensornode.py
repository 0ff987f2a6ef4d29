"""Sensor-node link benchmark: host decode throughput vs the bandwidth of a 921 600 baud UART and of USB full speed.

Run: python bench/bench_sensornode.py [--quick]

Table 1 decodes a recorded stream of DATA frames (plant vibration through the emulated 12-bit ADC, 256 samples per
channel per frame) with
  * the host decoder (hal.sensornode.protocol.Decoder: COBS + CRC-32 + parse to int16 arrays),
  * the same plus the driver's conversion to Blocks (engineering units, timestamps, gap accounting),
  * a reference: a textbook byte-at-a-time COBS decoder with zlib CRC-32 and the same parse,
and reports samples/s and CPU ns per sample (process time). Table 2 sets that against what each link can carry:
wire bytes per sample come from the encoded stream itself; UART 921 600 baud 8N1 carries 92 160 B/s; USB 1.1 full
speed bulk carries at most 19 x 64 B per 1 ms frame = 1 216 000 B/s (theoretical; real CDC stacks reach less).
Table 3 runs the firmware source in the emulator (hal.emulated.micropython) against the real driver over a pty and
measures what the emulation costs on this machine. Not a timed test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import resource
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hal.emulated.micropython.runner import EmulatedNode  # noqa: E402
from hal.emulated.micropython.shim import AnalogFrontEnd  # noqa: E402
from hal.emulated.plant import Plant  # noqa: E402
from hal.sensornode import protocol as P  # noqa: E402
from hal.sensornode.driver import SensorNode  # noqa: E402
from hal.sources import HalContext  # noqa: E402

UART_BPS = 921_600 / 10  # 8N1: 10 bits per byte
USB_FS_BPS = 19 * 64 * 1000  # bulk, theoretical maximum


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_stream(channels: int, frames: int, n: int = 256, rate: int = 25600) -> bytes:
    fe = AnalogFrontEnd(Plant(seed=1))
    period_us = 1_000_000 // rate  # the rp2 timer's whole-microsecond period (PROTOCOL.md, "Sample period")
    t_ns = np.arange(frames * n) * (period_us * 1000.0) + fe.plant.epoch_ns
    data = np.stack([fe.read_u16(c, t_ns) - 32768 for c in range(channels)], axis=1).astype("<i2")
    mask = (1 << channels) - 1
    out = bytearray()
    for k in range(frames):
        hdr = struct.pack("<BBHIIII", P.T_DATA, mask, n, k, (k * n * period_us) % (1 << 30), period_us * 1000, 0)
        out += P.encode_frame(hdr + data[k * n:(k + 1) * n].tobytes())
    return bytes(out)


def reference_decode(stream: bytes) -> int:
    """Textbook COBS: one byte at a time."""
    samples = 0
    buf = bytearray()
    for b in stream:
        if b:
            buf.append(b)
            continue
        out = bytearray()
        i = 0
        while i < len(buf):
            code = buf[i]
            i += 1
            for _ in range(code - 1):
                out.append(buf[i])
                i += 1
            if code < 255 and i < len(buf):
                out.append(0)
        buf.clear()
        body = bytes(out[:-4])
        if int.from_bytes(out[-4:], "little") == zlib.crc32(body) & 0xFFFFFFFF:
            _, mask, n, *_ = P.DATA_HDR.unpack_from(body)
            samples += np.frombuffer(body, "<i2", offset=P.DATA_HDR.size).size
    return samples


def run_decoder(stream: bytes, to_blocks: bool) -> int:
    dec = P.Decoder()
    drv = SensorNode("bench", {o.name: o.default for o in SensorNode.OPTIONS} | {"channels": [0, 1, 2]},
                     HalContext(emulate=False)) if to_blocks else None
    samples = 0
    for i in range(0, len(stream), 4096):
        for f in dec.feed(stream[i:i + 4096]):
            if drv is not None:
                if f.samples.shape[1] != len(drv.channels):
                    drv.channels = f.channels
                    drv.axes = tuple(f"ch{c}" for c in f.channels)
                b = drv._to_block(f, time.time_ns())
                samples += b.samples.size
            else:
                samples += f.samples.size
    return samples


def measure(fn, *args) -> tuple[int, float, float]:
    c0, w0 = cpu(), time.perf_counter()
    samples = fn(*args)
    return samples, cpu() - c0, time.perf_counter() - w0


def emulation(rate: int, channels: int, seconds: float) -> tuple[int, int, float, dict]:
    with tempfile.TemporaryDirectory() as d:
        plant = Plant(seed=2)
        node = EmulatedNode(plant, "0102030405060708", d)
        node.plug()
        drv = SensorNode("bench", {o.name: o.default for o in SensorNode.OPTIONS} | {
            "port": str(Path(d) / "ttyNODE*"), "rate_hz": rate, "channels": list(range(channels))},
            HalContext(emulate=False, plant=plant))
        drv.open()
        got = 0
        for _ in range(3):  # settle
            drv.read_block(1.0)
        c0, w0 = cpu(), time.perf_counter()
        first = None
        while time.perf_counter() - w0 < seconds:
            b = drv.read_block(0.5)
            if b is not None:
                got += len(b)
                first = first if first is not None else b.t0_ns
        wall = time.perf_counter() - w0
        used = cpu() - c0
        counters = drv.counters
        drv.close()
        node.close()
    return got, int(rate * wall), used / wall, counters


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller stream and shorter emulation runs")
    args = ap.parse_args()
    frames = 300 if args.quick else 1500
    secs = 1.5 if args.quick else 3.0

    print("Table 1: host decode throughput (256 samples/channel per frame, plant data through a 12-bit ADC)")
    print(f"{'channels':>8} {'decoder':<34} {'Msamples/s':>11} {'CPU ns/sample':>14}")
    per_sample = {}
    for ch in (1, 3):
        stream = make_stream(ch, frames)
        bytes_per_sample = len(stream) / (frames * 256 * ch)
        rows = [("Decoder (COBS+CRC+parse)", run_decoder, (stream, False)),
                ("Decoder + Blocks (driver)", run_decoder, (stream, True)),
                ("reference: byte-at-a-time COBS", reference_decode, (stream,))]
        for label, fn, a in rows:
            s, c, w = measure(fn, *a)
            assert s == frames * 256 * ch, (label, s)
            print(f"{ch:>8} {label:<34} {s / w / 1e6:>11.2f} {c / s * 1e9:>14.1f}")
            per_sample[(ch, label)] = c / s
        per_sample[(ch, "bytes")] = bytes_per_sample

    print()
    print("Table 2: what the links carry, and the host CPU needed to decode it into Blocks")
    print(f"{'link':<26} {'channels':>8} {'wire B/sample':>13} {'max samples/s':>14} {'25.6 kHz fits':>13} "
          f"{'host CPU at max':>15}")
    for name, bps in (("UART 921600 8N1", UART_BPS), ("USB full speed (bulk max)", USB_FS_BPS)):
        for ch in (1, 3):
            bps_sample = per_sample[(ch, "bytes")]
            cap = bps / bps_sample
            fits = "yes" if cap >= 25600 * ch else "no"
            cpu_frac = cap * per_sample[(ch, "Decoder + Blocks (driver)")]
            print(f"{name:<26} {ch:>8} {bps_sample:>13.3f} {cap:>14,.0f} {fits:>13} {cpu_frac * 100:>14.1f}%")

    print()
    print("Table 3: the firmware source in the emulator -> pty -> driver, on this machine (CPU = whole process)")
    print(f"{'rate Hz':>8} {'channels':>8} {'samples':>9} {'expected':>9} {'CPU %':>7} {'gaps':>6} {'bad frames':>10}")
    for rate, ch in ((3200, 1), (6400, 1), (6400, 3), (25600, 1)):
        got, expected, frac, c = emulation(rate, ch, secs)
        bad = c["crc_errors"] + c["cobs_errors"] + c["malformed_frames"]
        print(f"{rate:>8} {ch:>8} {got:>9} {expected:>9} {frac * 100:>6.1f}% {c['lost_samples']:>6} {bad:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
