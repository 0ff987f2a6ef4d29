"""The pipeline: wires acquisition → processing → outbox → uplink, and owns start-up and shutdown order.

Sinks start first and sources last; shutdown runs in reverse so queues drain: stop the readers, process what they
delivered, commit everything to the outbox, let the uplink publish what it can for a moment, close.

Threads, not asyncio: one reader thread per sensor (hardware libraries block), one processing thread (feature
kernels are Numba `nogil`), the outbox writer and the uplink. The queue between readers and processing is bounded;
a full queue drops and counts.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.config import Config, SensorConfig
from agent.outbox import Outbox
from agent.processing import Processor, make_processor
from agent.records import Emit
from agent.stats import Stats
from agent.uplink import Uplink
from hal.sources import HalContext, open_source
from hal.types import Block, Reading, now_ns

log = logging.getLogger("edge_agent.pipeline")


@dataclass
class _Item:
    sensor: str
    data: Block | list[Reading]


class Reader(threading.Thread):
    """Reads one sensor and hands what it gets to the processing queue. Never dies of a sensor fault."""

    def __init__(self, sensor: SensorConfig, context: HalContext, out: queue.Queue[_Item], stats: Stats,
                 stop: threading.Event) -> None:
        super().__init__(name=f"reader-{sensor.name}", daemon=True)
        self.sensor = sensor
        self.context = context
        self.out = out
        self.stats = stats
        self.stop_event = stop
        self.source = open_source(sensor.driver, sensor.name, sensor.options, context, bus=sensor.bus)

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
                        self._deliver(block)
                else:
                    t0 = time.monotonic()
                    readings = self.source.poll()  # type: ignore[union-attr]
                    if readings:
                        self._deliver(readings)
                    self.stop_event.wait(max(0.0, self.sensor.interval_s - (time.monotonic() - t0)))
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
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 60.0)
        if opened:
            try:
                self.source.close()
            except Exception as e:
                log.warning("closing sensor %s: %s", self.sensor.name, e)


class Agent:
    """The running agent. `start()`, then `stop()` (from a signal handler's thread or the main thread)."""

    def __init__(self, config: Config, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.stats = Stats()
        self.boot_ns = now_ns()
        self.context = HalContext(emulate=config.emulate, buses=config.buses)
        self.outbox = Outbox(state_dir, config.outbox, self.stats)
        self.uplink = Uplink(config, self.outbox, self.stats, boot_ns=self.boot_ns)
        self.processors: dict[str, Processor] = {s.name: make_processor(s) for s in config.sensors}
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=1000)
        self._stop_readers = threading.Event()
        self._stop_processing = threading.Event()
        self.readers = [Reader(s, self.context, self._queue, self.stats, self._stop_readers) for s in config.sensors]
        self._processing = threading.Thread(target=self._process, name="processing", daemon=True)
        self.started = threading.Event()

    def start(self) -> None:
        self.outbox.start()
        self.uplink.start()
        self._processing.start()
        for r in self.readers:
            r.start()
        self.started.set()
        log.info("edge-agent running: agent %s, %d sensors, outbox %s, broker %s", self.config.agent.id,
                 len(self.readers), self.outbox.path, self.config.mqtt.broker.url)

    def _emit(self, emits: list[Emit]) -> None:
        for e in emits:
            self.outbox.put(e)

    def _process(self) -> None:
        last_tick = time.monotonic()
        while True:
            self.stats.progress("processing")
            try:
                item = self._queue.get(timeout=0.25)
            except queue.Empty:
                item = None
                if self._stop_processing.is_set():
                    break
            if item is not None:
                proc = self.processors[item.sensor]
                try:
                    if isinstance(item.data, Block):
                        self._emit(proc.on_block(item.data))
                    else:
                        for reading in item.data:
                            self._emit(proc.on_reading(reading))
                except Exception as e:
                    self.stats.inc(f"processing_errors.{item.sensor}")
                    log.exception("processing %s failed: %s", item.sensor, e)
            if time.monotonic() - last_tick >= 0.5:
                last_tick = time.monotonic()
                t = now_ns()
                for name, proc in self.processors.items():
                    try:
                        self._emit(proc.tick(t))
                    except Exception as e:
                        self.stats.inc(f"processing_errors.{name}")
                        log.exception("processing %s (tick) failed: %s", name, e)

    def stop(self, drain_s: float = 3.0) -> None:
        """Stop acquisition, process what was read, commit it all, publish for up to `drain_s`, close."""
        log.info("stopping: flushing the outbox")
        self._stop_readers.set()
        for r in self.readers:
            r.join(5.0)
        self._stop_processing.set()
        if self._processing.is_alive():
            self._processing.join(10.0)
        committed = self.outbox.flush(10.0)
        if not committed:
            log.error("could not commit every record before shutdown: %s", self.outbox.fault or "timeout")
        self.uplink.stop(drain_s)
        self.outbox.stop()
        self.context.close()
        log.info("stopped: %d records left in the outbox for the next start", self.outbox.depth)
