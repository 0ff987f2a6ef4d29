"""The pipeline: wires acquisition → processing → outbox → uplink, and owns start-up and shutdown order.

Sinks start first and sources last; shutdown runs in reverse so queues drain: stop the readers, process what they
delivered, commit everything to the outbox, let the uplink publish what it can for a moment, close.

Threads, not asyncio: one reader thread per sensor (hardware libraries block), one processing thread (feature
kernels are Numba `nogil`), the outbox writer and the uplink. The queue between readers and processing is bounded;
a full queue drops and counts.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.config import Config, SensorConfig
from agent.outbox import Outbox
from agent.processing import Processor, ValueBoard, make_processor
from agent.realtime import RealtimePolicy, promote_reader, restore_process, tune_process
from agent.records import Emit
from agent.stats import Stats
from agent.uplink import Uplink
from hal.sources import HalContext, open_source
from hal.types import Block, Quality, Reading, now_ns

log = logging.getLogger("edge_agent.pipeline")


@dataclass
class _Item:
    sensor: str
    data: Block | list[Reading]


class Reader(threading.Thread):
    """Reads one sensor and hands what it gets to the processing queue. Never dies of a sensor fault."""

    def __init__(self, sensor: SensorConfig, context: HalContext, out: queue.Queue[_Item], stats: Stats,
                 stop: threading.Event, realtime: RealtimePolicy | None = None) -> None:
        super().__init__(name=f"reader-{sensor.name}", daemon=True)
        self.sensor = sensor
        self.context = context
        self.out = out
        self.stats = stats
        self.stop_event = stop
        self.realtime = realtime or RealtimePolicy.off()
        self.scheduling = "default"
        self.source = open_source(sensor.driver, sensor.name, sensor.options, context, bus=sensor.bus)

    def _latency(self) -> None:
        """Publish how close a buffered stream source came to losing samples: its worst drain interval against
        the time its buffer holds (`reader_latency_ms.<sensor>` vs `reader_slack_ms.<sensor>`)."""
        worst = getattr(self.source, "worst_drain_interval_s", None)
        if worst is not None:
            name = self.sensor.name
            self.stats.set(f"reader_latency_ms.{name}", round(worst * 1e3, 2))
            self.stats.set(f"reader_slack_ms.{name}", round(self.source.buffer_slack_s * 1e3, 2))  # type: ignore

    def _deliver(self, data: Block | list[Reading]) -> None:
        try:
            self.out.put_nowait(_Item(self.sensor.name, data))
        except queue.Full:
            self.stats.inc("processing_queue_full")
            self.stats.inc(f"dropped.{self.sensor.name}")

    def run(self) -> None:
        stage = f"reader.{self.sensor.name}"
        backoff = 1.0
        opened = False
        if self.source.kind == "stream":  # a hardware FIFO waits for nobody: this thread goes first
            self.scheduling = promote_reader(self.realtime)
            self.stats.set(f"reader_scheduling.{self.sensor.name}", self.scheduling)
            log.info("sensor %s: reader thread scheduled %s", self.sensor.name, self.scheduling)
        while not self.stop_event.is_set():
            self.stats.progress(stage)
            try:
                if not opened:
                    self.source.open()
                    opened = True
                    backoff = 1.0
                if self.source.kind == "stream":
                    block = self.source.read_block(timeout=0.5)  # type: ignore[union-attr]
                    if block is not None:
                        self.stats.inc(f"samples.{self.sensor.name}", len(block))
                        self._deliver(block)
                        self._latency()
                else:
                    clock = self.context.clock  # real time, or plant time when emulating faster
                    t0 = clock.monotonic()
                    readings = self.source.poll()  # type: ignore[union-attr]
                    self.stats.inc(f"reads.{self.sensor.name}")
                    if readings:
                        self._deliver(readings)
                    clock.wait(self.stop_event, self.sensor.interval_s - (clock.monotonic() - t0))
            except Exception as e:  # a driver bug or an unplugged device must not kill the agent
                self.stats.inc(f"reader_errors.{self.sensor.name}")
                log.error("sensor %s (%s): %s: %s; retrying in %.0f s", self.sensor.name, self.sensor.driver,
                          type(e).__name__, e, backoff)
                if opened:
                    try:
                        self.source.close()
                    except Exception:
                        pass
                    opened = False
                deadline = time.monotonic() + backoff
                while not self.stop_event.is_set() and time.monotonic() < deadline:  # waiting is not being stuck
                    self.stop_event.wait(min(1.0, max(0.0, deadline - time.monotonic())))
                    self.stats.progress(stage)
                backoff = min(backoff * 2, 60.0)
        if opened:
            try:
                self.source.close()
            except Exception as e:
                log.warning("closing sensor %s: %s", self.sensor.name, e)


@dataclass
class CaptureRequest:
    """A raw window of one stream sensor, asked for by the `capture` command (or a diagnostic)."""

    sensor: str
    samples_needed: int
    blocks: list[Block] = field(default_factory=list)
    have: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    emit: Emit | None = None


def capture_emit(sensor: str, blocks: list[Block], n: int) -> Emit:
    """A `capture` record: the raw samples as base64 little-endian float32 per axis (compact and exact enough)."""
    data = np.concatenate([b.samples.reshape(len(b), -1) for b in blocks])[:n].astype("<f4")
    first = blocks[0]
    payload = {
        "sensor": sensor, "unit": first.unit, "rate_hz": first.rate_hz, "n": int(data.shape[0]),
        "axes": list(first.axes), "encoding": "f32le-base64",
        "data": {axis: base64.b64encode(np.ascontiguousarray(data[:, k]).tobytes()).decode()
                 for k, axis in enumerate(first.axes)},
    }
    return Emit("capture", f"{sensor}.capture", first.t0_ns, payload, Quality.worst(*(b.quality for b in blocks)))


class Agent:
    """The running agent. `start()`, then `stop()`; `reload()` swaps the configuration while running."""

    def __init__(self, config: Config, state_dir: Path, *, config_path: str | None = None, clock: object = None,
                 plant: object = None, realtime: RealtimePolicy | None = None) -> None:
        self.config = config
        self.realtime = RealtimePolicy() if realtime is None else realtime  # the readers' real-time budget
        self._switch_interval: float | None = None
        self.clock = clock  # hal.clock for the sensors (None: real time); a scaled clock runs emulation faster
        self.plant = plant  # the emulated plant to use (None: each HalContext makes its own)
        self.config_path = config_path
        self.state_dir = state_dir
        self.stats = Stats()
        self.boot_ns = now_ns()
        self.outbox = Outbox(state_dir, config.outbox, self.stats)
        self.uplink = Uplink(config, self.outbox, self.stats, boot_ns=self.boot_ns)
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=1000)
        self._captures: list[CaptureRequest] = []
        self._captures_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.commands = None
        self._build_acquisition(config)
        self.started = threading.Event()

    def _build_acquisition(self, config: Config) -> None:
        """Drivers, readers and processors for `config` (constructed, not started). Raises on a driver error."""
        self.context = HalContext(emulate=config.emulate, buses=config.buses, plant=self.plant, clock=self.clock)
        self.board = ValueBoard()  # recent slow values (a tachometer's shaft speed) for this pipeline's windows
        self.processors: dict[str, Processor] = {s.name: make_processor(s, self.board) for s in config.sensors}
        self._stop_readers = threading.Event()
        self._stop_processing = threading.Event()
        self.readers = [self._reader(s) for s in config.sensors]
        self._processing = threading.Thread(target=self._process, args=(self._stop_processing, self.processors),
                                            name="processing", daemon=True)

    def _reader(self, s: SensorConfig) -> Reader:
        process = self.realtime.process
        if process is None:  # real buses only: an emulated chip in another process would not see our plant
            table = self.context.buses.get(s.bus or "") or {}
            process = not (self.context.emulate or s.driver.startswith("emulated.")
                           or table.get("backend", "real") == "emulated")
        if s.kind == "stream" and process:
            from agent.acquisition import ProcessReader

            def deliver(block: Block, name: str = s.name) -> None:
                try:
                    self._queue.put_nowait(_Item(name, block))
                except queue.Full:
                    self.stats.inc("processing_queue_full")
                    self.stats.inc(f"dropped.{name}")
            return ProcessReader(s, self.context, deliver, self.stats, self._stop_readers,  # type: ignore
                                 self.realtime)
        return Reader(s, self.context, self._queue, self.stats, self._stop_readers, self.realtime)

    def _start_acquisition(self) -> None:
        if any(s.kind == "stream" for s in self.config.sensors) and self._switch_interval is None:
            self._switch_interval = tune_process(self.realtime)
        self._processing.start()
        for r in self.readers:
            r.start()

    def _stop_acquisition(self) -> None:
        """Stop the readers, then let processing finish what they delivered."""
        self._stop_readers.set()
        for r in self.readers:
            r.join(5.0)
            if r.is_alive():
                log.error("sensor %s did not stop within 5 s (a driver stuck in a read?)", r.sensor.name)
        self._stop_processing.set()
        if self._processing.is_alive():
            self._processing.join(10.0)
        self.context.close()
        restore_process(self._switch_interval)
        self._switch_interval = None

    def _attach_commands(self) -> None:
        if self.config.commands.enabled:
            from agent.commands import CommandHandler
            self.commands = CommandHandler(self)
            self.uplink.on_command = self.commands.submit
            self.uplink.on_write = self.commands.write
            self.commands.start()

    def start(self) -> None:
        self.outbox.start()
        self._attach_commands()
        self.uplink.start()
        self._start_acquisition()
        self.started.set()
        log.info("edge-agent running: agent %s, %d sensors, outbox %s, broker %s", self.config.agent.id,
                 len(self.readers), self.outbox.path, self.config.mqtt.broker.url)

    def queue_depths(self) -> dict[str, int]:
        """Items waiting between the stages (for health and status)."""
        return {"processing": self._queue.qsize(), "outbox": self.outbox.queue_depth()}

    def _emit(self, emits: list[Emit]) -> None:
        for e in emits:
            self.outbox.put(e)

    def request_capture(self, sensor: str, seconds: float) -> CaptureRequest:
        """Ask for `seconds` of raw samples of a stream sensor; wait on `.done`, then read `.emit` or `.error`."""
        cfg = next((s for s in self.config.sensors if s.name == sensor), None)
        if cfg is None or cfg.kind != "stream":
            raise ValueError(f"expected the name of a stream sensor "
                             f"({', '.join(s.name for s in self.config.sensors if s.kind == 'stream') or 'none'}), "
                             f"got {sensor!r}")
        rate = float(cfg.options.get("rate_hz", 0) or 0)
        if rate <= 0:
            raise ValueError(f"sensor {sensor} has no known sample rate")
        req = CaptureRequest(sensor, max(1, int(round(seconds * rate))))
        with self._captures_lock:
            self._captures.append(req)
        return req

    def capture(self, sensor: str, seconds: float, timeout_s: float) -> Emit:
        """Record `seconds` of raw samples of a stream sensor (the `capture` record is also committed to the outbox
        and published). Raises ValueError for a sensor that cannot be captured, TimeoutError when the samples do
        not arrive within `timeout_s`."""
        req = self.request_capture(sensor, seconds)
        if not req.done.wait(timeout_s):
            with self._captures_lock:
                if req in self._captures:
                    self._captures.remove(req)
            raise TimeoutError(f"sensor {sensor} delivered {req.have} of {req.samples_needed} samples within "
                               f"{timeout_s:g} s (is it delivering? see `edge-agent status`)")
        assert req.emit is not None
        return req.emit

    def _feed_captures(self, sensor: str, block: Block) -> None:
        with self._captures_lock:
            if not self._captures:
                return
            for req in [c for c in self._captures if c.sensor == sensor]:
                if block.gap and req.blocks:  # a capture is contiguous: start again after a gap
                    req.blocks, req.have = [], 0
                req.blocks.append(block)
                req.have += len(block)
                if req.have >= req.samples_needed:
                    req.emit = capture_emit(sensor, req.blocks, req.samples_needed)
                    self._emit([req.emit])
                    req.blocks = []
                    self._captures.remove(req)
                    req.done.set()

    def _process(self, stop: threading.Event, processors: dict[str, Processor]) -> None:
        clock = self.context.clock  # ticks every 0.5 s of sensor time (plant time when emulating faster)
        last_tick = clock.monotonic()
        while True:
            self.stats.progress("processing")
            try:
                item = self._queue.get(timeout=0.25)
            except queue.Empty:
                item = None
                if stop.is_set():
                    break
            if item is not None:
                proc = processors.get(item.sensor)
                try:
                    if proc is None:
                        pass  # delivered by a reader of the configuration before a reload
                    elif isinstance(item.data, Block):
                        self._feed_captures(item.sensor, item.data)
                        self._emit(proc.on_block(item.data))
                    else:
                        for reading in item.data:
                            self._emit(proc.on_reading(reading))
                except Exception as e:
                    self.stats.inc(f"processing_errors.{item.sensor}")
                    log.exception("processing %s failed: %s", item.sensor, e)
            if clock.monotonic() - last_tick >= 0.5:
                last_tick = clock.monotonic()
                t = clock.time_ns()
                for name, proc in processors.items():
                    try:
                        self._emit(proc.tick(t))
                    except Exception as e:
                        self.stats.inc(f"processing_errors.{name}")
                        log.exception("processing %s (tick) failed: %s", name, e)

    def reload(self, path: str | None = None) -> tuple[bool, str]:
        """Re-read the configuration. A bad one is rejected and the running one kept; returns (ok, message).

        Sensors are rebuilt; the uplink reconnects if the broker settings or the agent id changed; the outbox
        settings apply at the next start.
        """
        from agent.config import load, load_demo
        from agent.errors import ConfigError

        with self._reload_lock:
            source = path or self.config_path
            try:
                new = load(source, emulate=self.config.emulate) if source else load_demo(emulate=True)
            except ConfigError as e:
                self.stats.inc("reloads_rejected")
                log.error("reload rejected, keeping the running configuration:\n%s", e)
                return False, str(e)
            old_config = self.config
            self._stop_acquisition()
            try:
                self._build_acquisition(new)
            except Exception as e:
                self.stats.inc("reloads_rejected")
                log.error("reload rejected (%s: %s), keeping the running configuration", type(e).__name__, e)
                self._build_acquisition(old_config)
                self._start_acquisition()
                return False, f"{type(e).__name__}: {e}"
            self.config = new
            if source:
                self.config_path = source
            if new.mqtt != old_config.mqtt or new.agent.id != old_config.agent.id or \
                    new.commands != old_config.commands:
                self.uplink.stop(drain_s=1.0)
                self.uplink = Uplink(new, self.outbox, self.stats, boot_ns=self.boot_ns)
                if self.commands is not None:
                    self.commands.stop()
                    self.commands = None
                self._attach_commands()
                self.uplink.start()
            self._start_acquisition()
            note = " (outbox settings apply at the next start)" if new.outbox != old_config.outbox else ""
            self.stats.inc("reloads")
            log.info("configuration reloaded from %s (sha256 %s)%s", new.source, new.digest, note)
            return True, f"reloaded {new.source} (sha256 {new.digest}){note}"

    def stop(self, drain_s: float = 3.0) -> None:
        """Stop acquisition, process what was read, commit it all, publish for up to `drain_s`, close."""
        log.info("stopping: flushing the outbox")
        self._stop_acquisition()
        if self.commands is not None:
            self.commands.stop()
        committed = self.outbox.flush(10.0)
        if not committed:
            log.error("could not commit every record before shutdown: %s", self.outbox.fault or "timeout")
        self.uplink.stop(drain_s)
        self.outbox.stop()
        log.info("stopped: %d records left in the outbox for the next start", self.outbox.depth)
