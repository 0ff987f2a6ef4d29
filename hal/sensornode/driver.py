"""The "sensornode" stream driver: an RP2040 sensor node on a serial port (USB-CDC or UART), as `Block`s.

Owns the node's serial port: finding it (a path or a glob, each candidate identified and matched by board id rather
than by /dev path), configuring it (rate, channels, block size), decoding its DATA frames into blocks in engineering
units with host timestamps, and getting it back after a fault (noise, a reset node, unplug and re-enumeration)
without the agent restarting. Where the node is comes from the ("sensornode", backend) row of hal.backends, asked
at `open()` like a bus: the real row (`NodePorts`) returns the configured port and board id as they are; the
emulated row (hal.emulated.sensornode) boots the firmware in the emulator on a pty, its ADC reading the shared
plant, and returns that pty's glob and board id. This driver only opens ports; it never starts an emulator.

Never raises from `read_block` for a link fault: it returns None, counts the fault in `counters`, reports the lost
samples as the next block's `gap`, and keeps reconnecting with a bounded backoff.
"""

from __future__ import annotations

import glob
import logging
import select
import termios
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hal.errors import ConfigurationError
from hal.options import Option, at_most, in_range
from hal.sensornode import protocol as P
from hal.sources import HalContext
from hal.types import Block, Quality, now_ns

log = logging.getLogger("hal.sensornode")

# what a vanishing or misbehaving port raises (pyserial's SerialException is an OSError; tcflush raises termios.error)
_PORT_ERRORS = (OSError, ValueError, TypeError, termios.error)


def _hex_id(v: Any) -> str | None:
    try:
        bytes.fromhex(v)
    except ValueError:
        return "expected the board id in hex, e.g. \"e6614c311b2a3c2d\" (edge-agent sensornode list prints it)"
    return None


def _channels(v: Any) -> str | None:
    if (v and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 4 for c in v)
            and list(v) == sorted(set(v))):
        return None
    return "expected a non-empty ascending list of ADC channels 0..4"


def _names(v: Any) -> str | None:
    return None if all(isinstance(a, str) and a for a in v) else "expected a list of axis names"


class LinkFault(Exception):
    """The port failed or the node stopped answering (handled inside the driver, never raised to the caller)."""


class NodeRefused(Exception):
    """The node answered a command with an ERROR frame."""


@dataclass
class _Last:
    seq: int
    t0_raw: int
    t0_dev_us: int  # unwrapped device time of the frame's first sample
    n: int
    rate: float


class NodePorts:
    """Where a real node is: the configured port (a path or glob) and board id, as they are. The ("sensornode",
    "emulated") row of hal.backends serves the same two calls with a node it boots on a pty."""

    def prepare(self, driver: "SensorNode") -> tuple[str, str]:
        """(port path or glob, board id) for `driver` to open, called at every `open()`."""
        return driver.port_pattern, driver.board_id

    def release(self, driver: "SensorNode") -> None:
        """The driver closed; nothing to do for a node on a real wire."""

    def close(self) -> None:
        pass


def real_node_ports(context: HalContext, name: str, bus_type: str, values: dict[str, Any]) -> NodePorts:
    """The ("sensornode", "real") backend of `hal.backends`."""
    return NodePorts()


def node_ports(context: HalContext, sensor: str) -> Any:
    """The port source of `sensor`'s node, real or emulated as the context says (shared as "sensornode:<sensor>")."""
    from hal.backends import open_bus

    return open_bus(context, "sensornode", sensor, "sensornode", {}, bool(context.emulate))


class SensorNode:
    """An RP2040 sensor node streaming ADC channels (firmware/), matched by board id on a port path or glob."""

    kind: ClassVar[str] = "stream"
    OPTIONS = [
        Option("port", str, "/dev/ttyACM*", "serial port path or glob; each candidate is identified in turn"),
        Option("board_id", str, "", "hex board id (machine.unique_id) to match; empty takes the first node found",
               _hex_id),
        Option("rate_hz", int, 3200, "samples per second per channel (the firmware allows 1..25600)",
               in_range(1, 25600)),
        Option("block_size", int, 256, "samples per channel in one frame", in_range(1, 1024)),
        Option("channels", list, [0], "ADC channels to sample, ascending (0-2: GP26-28, 3: VSYS/3, 4: temperature)",
               _channels),
        Option("axes", list, [], "one name per channel (default \"x\" for one channel, else ch<N>)", _names),
        Option("unit", str, "m/s2", "engineering unit of the samples"),
        Option("mv_per_unit", (int, float), 10.0, "sensor sensitivity in mV per unit", at_most(1e6)),
        Option("zero_v", (int, float), 1.65, "sensor output in V at zero", in_range(0, 5)),
        Option("vref_v", (int, float), 3.3, "ADC reference voltage", in_range(0.5, 10)),
        Option("baudrate", int, 921600, "baud rate of a UART link (USB-CDC ignores it)",
               in_range(50, 16_000_000)),
        Option("timeout_s", (int, float), 2.0, "command reply timeout; a silent link is reopened after it",
               in_range(0.1, 60)),
        Option("reconnect_max_s", (int, float), 10.0, "longest wait between reconnect attempts", in_range(0.1, 600)),
    ]

    def __init__(self, name: str, options: Mapping[str, Any], context: HalContext, bus: str | None = None) -> None:
        self.name = name
        self.context = context
        self.port_pattern = options["port"]
        self.board_id = options["board_id"].lower()
        self.requested_hz = int(options["rate_hz"])  # what SET_RATE asks for
        self.rate_hz = float(self.requested_hz)  # what the node reports it really runs (1e9 / period_ns)
        self.block_size = int(options["block_size"])
        self.channels = tuple(options["channels"])
        axes = list(options["axes"])
        if axes and len(axes) != len(self.channels):
            raise ConfigurationError(f"{name}.axes: expected {len(self.channels)} names (one per channel), "
                                     f"got {len(axes)}")
        self.axes = tuple(axes) if axes else (("x",) if len(self.channels) == 1 else
                                              tuple(f"ch{c}" for c in self.channels))
        self.unit = options["unit"]
        self.mask = sum(1 << c for c in self.channels)
        mv = float(options["mv_per_unit"]) / 1000.0
        vref = float(options["vref_v"])
        self.mv_per_unit = float(options["mv_per_unit"])  # the analog front end, also what an emulated node models
        self.zero_v = float(options["zero_v"])
        self.vref_v = vref
        self._scale = vref / 65536.0 / mv
        self._offset = (vref / 2.0 - float(options["zero_v"])) / mv
        self.baudrate = int(options["baudrate"])
        self.timeout_s = float(options["timeout_s"])
        self.reconnect_max_s = float(options["reconnect_max_s"])

        self.identity: P.Identity | None = None
        self.port: str | None = None  # the port in use
        self.ports: Any = None  # where the node is (hal.backends "sensornode" row), from open()
        self._ser: Any = None
        self._dec = P.Decoder()
        self._pending: deque[Block] = deque()
        self._replies: dict[int, P.Frame] = {}
        self._tag = 0
        self._io = threading.RLock()
        self._closed = True
        self._next_attempt = 0.0
        self._backoff = 0.0
        self._last: _Last | None = None
        self._anchor: tuple[int, int] | None = None  # (host ns, device µs) of one sample
        self._end_ns: int | None = None  # host time just after the last delivered sample
        self._last_frame_at = 0.0
        self._stats = dict(blocks=0, lost_frames=0, lost_samples=0, node_overruns=0, time_gaps=0, reconnects=0,
                           link_faults=0, stalls=0, node_errors=0, identify_mismatches=0, reanchors=0,
                           stale_frames=0)
        self._streaming = False  # DATA frames are blocks only after our START was acknowledged

    # ---- life cycle ------------------------------------------------------------------------------------------

    def open(self) -> None:
        self._closed = False
        self.ports = node_ports(self.context, self.name)
        self.port_pattern, self.board_id = self.ports.prepare(self)
        try:
            self._connect(time.monotonic() + 2 * self.timeout_s)
        except LinkFault as e:
            log.warning("%s: no sensor node yet (%s); will keep trying", self.name, e)
            self._schedule_retry()

    def close(self) -> None:
        self._closed = True
        with self._io:
            if self._ser is not None:
                try:
                    self._ser.write(P.command(P.T_STOP, self._next_tag()))
                except Exception:
                    pass
            self._drop_port()
        if self.ports is not None:
            self.ports.release(self)

    @property
    def counters(self) -> dict[str, int]:
        """Faults and losses so far: decoder errors by reason, lost frames and samples, reconnects, ..."""
        d = self._dec.stats
        out = dict(self._stats)
        out.update(frames=d.frames, bytes=d.bytes, crc_errors=d.crc_errors, cobs_errors=d.cobs_errors,
                   short_frames=d.short, oversize_frames=d.oversize, malformed_frames=d.malformed,
                   discarded_bytes=d.discarded_bytes)
        return out

    # ---- reading ------------------------------------------------------------------------------------------------

    def read_block(self, timeout: float) -> Block | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                return None
            now = time.monotonic()
            if self._ser is None:
                if now >= self._next_attempt:
                    try:
                        self._connect(max(deadline, now + self.timeout_s))
                    except LinkFault as e:
                        log.info("%s: reconnect failed: %s", self.name, e)
                        self._schedule_retry()
                    continue
                if now >= deadline:
                    return None
                time.sleep(min(deadline, self._next_attempt) - now)
                continue
            if now >= deadline:
                return None
            try:
                self._pump(min(deadline - now, 0.1))
                if time.monotonic() - self._last_frame_at > self.timeout_s:
                    self._stats["stalls"] += 1
                    raise LinkFault(f"no frame for {self.timeout_s:g} s")
            except LinkFault as e:
                self._fault(e)

    def set_rate(self, rate_hz: int) -> None:
        """Change the sample rate while streaming; blocks at the new rate follow (a rate change starts a new run)."""
        rate = int(rate_hz)
        ident = self.identity
        if ident is not None and not ident.min_rate_hz <= rate <= ident.max_rate_hz:
            raise ConfigurationError(f"{self.name}: rate {rate} Hz outside the node's "
                                     f"{ident.min_rate_hz}..{ident.max_rate_hz} Hz")
        self.requested_hz = rate
        self.rate_hz = float(rate)
        with self._io:
            if self._ser is None:
                return  # applied at the next connect
            try:
                reply = self._command(P.T_SET_RATE, rate)
                self.rate_hz = 1e9 / reply.fields["period_ns"]
            except NodeRefused as e:
                raise ConfigurationError(f"{self.name}: {e}") from None
            except LinkFault as e:
                self._fault(e)

    # ---- internals ----------------------------------------------------------------------------------------------

    def _next_tag(self) -> int:
        self._tag = self._tag % 255 + 1
        return self._tag

    def _candidates(self) -> list[str]:
        if glob.has_magic(self.port_pattern):
            return sorted(glob.glob(self.port_pattern))
        return [self.port_pattern]

    def _connect(self, deadline: float) -> None:
        import serial

        with self._io:
            self._drop_port()
            tried: list[str] = []
            for path in self._candidates():
                if time.monotonic() >= deadline and tried:
                    break
                tried.append(path)
                try:
                    ser = serial.Serial(path, self.baudrate, timeout=0, exclusive=True)
                except _PORT_ERRORS as e:  # busy (another process has it), vanished, not a tty
                    log.debug("%s: cannot open %s: %s", self.name, path, e)
                    continue
                self._ser = ser
                self._dec.reset()
                self._replies.clear()
                try:
                    ser.reset_input_buffer()
                    ser.write(b"\x00")  # end whatever partial frame the node has received
                    self._streaming = False  # a node still streaming from before: its frames are ignored
                    ident = self._command(P.T_IDENTIFY)  # nothing else is sent to a board that is not ours
                except _PORT_ERRORS as e:
                    log.debug("%s: %s failed while identifying: %s", self.name, path, e)
                    self._drop_port()
                    continue
                except (LinkFault, NodeRefused) as e:
                    log.debug("%s: %s does not answer as a sensor node: %s", self.name, path, e)
                    self._drop_port()
                    continue
                if self.board_id and ident.board_id != self.board_id:
                    self._stats["identify_mismatches"] += 1
                    log.debug("%s: %s is board %s, not %s", self.name, path, ident.board_id, self.board_id)
                    self._drop_port()
                    continue
                try:
                    self._configure(ident)
                except NodeRefused as e:
                    self._drop_port()
                    raise LinkFault(f"{path}: board {ident.board_id} refused the configuration: {e}") from None
                except LinkFault:
                    self._drop_port()
                    raise
                self.identity = ident
                self.port = path
                if self._end_ns is not None:
                    self._stats["reconnects"] += 1
                self._backoff = 0.0
                self._last_frame_at = time.monotonic()
                log.info("%s: board %s (firmware %s) on %s, %g Hz, channels %s", self.name, ident.board_id,
                         ".".join(map(str, ident.version)), path, self.rate_hz, list(self.channels))
                return
            want = f"board {self.board_id}" if self.board_id else "a sensor node"
            raise LinkFault(f"{want} not found on {self.port_pattern} (tried: {', '.join(tried) or 'no such port'})")

    def _configure(self, ident: P.Identity) -> None:
        missing = [c for c in self.channels if not ident.available_mask >> c & 1]
        if missing:
            raise NodeRefused(f"channels {missing} not available (node has {list(ident.available_channels)})")
        if ident.proto != P.PROTO_VERSION:
            raise NodeRefused(f"protocol {ident.proto}, expected {P.PROTO_VERSION}: flash the firmware/ of this "
                              f"edge-agent version (docs/sensornode.md)")
        if not ident.min_rate_hz <= self.requested_hz <= ident.max_rate_hz:
            raise NodeRefused(f"rate {self.requested_hz} Hz outside {ident.min_rate_hz}..{ident.max_rate_hz} Hz")
        self.rate_hz = 1e9 / self._command(P.T_SET_RATE, self.requested_hz).fields["period_ns"]
        self._last = None
        self._anchor = None
        self._command(P.T_START, self.mask, self.block_size)

    def _command(self, kind: int, *args: int) -> Any:
        """Send a command and wait for its reply (DATA frames meanwhile are queued as blocks). Two attempts."""
        for _attempt in range(2):
            tag = self._next_tag()
            try:
                self._ser.write(P.command(kind, tag, *args))
            except _PORT_ERRORS as e:
                raise LinkFault(f"write failed: {e}") from None
            end = time.monotonic() + self.timeout_s / 2
            while time.monotonic() < end:
                self._pump(min(0.05, end - time.monotonic()))
                reply = self._replies.pop(tag, None)
                if reply is None:
                    continue
                if isinstance(reply, P.ErrorFrame):
                    if reply.code == P.E_CRC:
                        break  # our command was corrupted on the way: send it again
                    raise NodeRefused(str(reply))
                return reply
        raise LinkFault(f"no reply to {P.COMMAND_NAMES.get(kind, kind)} within {self.timeout_s:g} s")

    def _pump(self, wait_s: float) -> None:
        """Read what the port has (waiting up to wait_s for the first byte) and decode it."""
        with self._io:
            ser = self._ser
            if ser is None:
                raise LinkFault("port closed")
            try:
                # wait with select() on the fd: setting pyserial's timeout per call would reprogram the tty
                # (tcsetattr) every time; the port stays non-blocking (timeout=0)
                waiting = ser.in_waiting
                if not waiting and wait_s > 0:
                    select.select([ser.fileno()], [], [], wait_s)
                    waiting = ser.in_waiting
                data = ser.read(max(1, waiting))
            except _PORT_ERRORS as e:
                raise LinkFault(f"read failed: {e}") from None
            if not data:
                return
            arrival = now_ns()
            for frame in self._dec.feed(data):
                if isinstance(frame, P.DataFrame):
                    self._last_frame_at = time.monotonic()
                    if self._streaming:
                        self._pending.append(self._to_block(frame, arrival))
                    else:  # still streaming from before our STOP
                        self._stats["stale_frames"] += 1
                elif isinstance(frame, (P.Reply, P.Identity)):
                    self._last_frame_at = time.monotonic()
                    if isinstance(frame, P.Reply) and frame.type == P.T_START | P.REPLY:
                        self._streaming = True
                    self._replies[frame.tag] = frame
                else:  # ErrorFrame
                    self._stats["node_errors"] += 1
                    if frame.tag:
                        self._replies[frame.tag] = frame
                    log.debug("%s: %s", self.name, frame)

    def _to_block(self, f: P.DataFrame, arrival_ns: int) -> Block:
        rate = f.rate_hz  # the real rate, from the node's timer period (not the nominal one asked for)
        period_ns = float(f.period_ns)
        gap = f.dropped
        if f.dropped:
            self._stats["node_overruns"] += f.dropped
        ticks = 1 << (self.identity.ticks_bits if self.identity else 30)
        last = self._last
        if last is not None:
            lost = (f.seq - last.seq - 1) & 0xFFFFFFFF
            dev = last.t0_dev_us + (f.t0_us - last.t0_raw) % ticks
            if lost > 1_000_000:  # the sequence restarted: the node rebooted behind our back
                last = None
            elif lost:
                self._stats["lost_frames"] += lost
                gap += lost * last.n
            elif rate == last.rate and not f.dropped:
                jump = (dev - last.t0_dev_us - last.n * 1e6 / last.rate) * rate / 1e6
                if jump > 1.5:  # samples the node never took (an emulator that fell behind, a stalled timer)
                    self._stats["time_gaps"] += 1
                    gap += int(round(jump))
        if last is None:
            dev = f.t0_us
            host_t0 = arrival_ns - int(round(f.n * period_ns))
            if self._end_ns is not None:  # a new stream after a fault: what was lost is known only from host time
                gap += max(1, int(round((host_t0 - self._end_ns) / period_ns)))
            self._anchor = (host_t0, dev)
        t0_ns = self._anchor[0] + (dev - self._anchor[1]) * 1000
        expected_arrival = t0_ns + f.n * period_ns
        if abs(arrival_ns - expected_arrival) > 1e9:  # clocks drifted apart or the host stalled: re-anchor
            self._stats["reanchors"] += 1
            t0_ns = arrival_ns - int(round(f.n * period_ns))
            self._anchor = (t0_ns, dev)
        self._last = _Last(f.seq, f.t0_us, dev, f.n, rate)
        self._end_ns = int(t0_ns + f.n * period_ns)
        if gap:
            self._stats["lost_samples"] += gap
        raw = f.samples
        clipped = bool(raw.size and (raw.min() <= -32768 + 15 or raw.max() >= 32767 - 15))
        values = raw * self._scale + self._offset
        samples = values[:, 0] if values.shape[1] == 1 else values
        self._stats["blocks"] += 1
        axes = self.axes if values.shape[1] == len(self.axes) else tuple(f"ch{c}" for c in f.channels)
        return Block(self.name, int(t0_ns), float(rate), np.ascontiguousarray(samples), self.unit,
                     Quality.UNCERTAIN if clipped else Quality.GOOD, int(gap), axes)

    def _fault(self, e: Exception) -> None:
        self._stats["link_faults"] += 1
        log.warning("%s: link fault on %s: %s; reconnecting", self.name, self.port, e)
        with self._io:
            self._drop_port()
        self._next_attempt = time.monotonic()  # first retry at once, then back off

    def _schedule_retry(self) -> None:
        self._backoff = min(self.reconnect_max_s, max(0.2, self._backoff * 2))
        self._next_attempt = time.monotonic() + self._backoff

    def _drop_port(self) -> None:
        ser, self._ser = self._ser, None
        self._streaming = False
        self._dec.reset()
        self._last = None
        if ser is not None:
            try:
                ser.close()
            except Exception:
                pass


def probe(path: str, baudrate: int = 921600, timeout_s: float = 1.0) -> P.Identity | str:
    """Identify the node on one port without disturbing it (IDENTIFY only). Returns its identity or why not."""
    import serial

    try:
        ser = serial.Serial(path, baudrate, timeout=0.05, exclusive=True)
    except _PORT_ERRORS as e:
        return f"cannot open ({e})"
    dec = P.Decoder()
    try:
        ser.write(b"\x00" + P.command(P.T_IDENTIFY, 0x5A))
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for f in dec.feed(ser.read(max(1, ser.in_waiting))):
                if isinstance(f, P.Identity) and f.tag == 0x5A:
                    return f
        return f"no sensor-node reply within {timeout_s:g} s ({dec.stats.bytes} bytes, {dec.stats.frames} frames)"
    except _PORT_ERRORS as e:
        return f"I/O error ({e})"
    finally:
        ser.close()


__all__ = ["SensorNode", "probe"]
