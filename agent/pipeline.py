"""The pipeline: wires acquisition → processing → outbox → uplink, and owns start-up and shutdown order.

Sinks start first and sources last, with one exception (`acquire_early`, what `edge-agent run` uses): stream
sensors are read from the moment their driver is built, before anything else, because their first window needs a
window's worth of samples whatever else is ready; their blocks wait in the bounded processing queue until
processing starts with the rest. Shutdown runs in reverse so queues drain: stop the readers, process what they
delivered, commit everything to the outbox, let the uplink publish what it can for a moment, close.

Threads, not asyncio: one reader thread per sensor (hardware libraries block), one processing thread (feature
kernels are Numba `nogil`), the outbox writer and the uplink. The queue between readers and processing is bounded;
a full queue drops and counts.
"""

from __future__ import annotations

import base64
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.config import Config, SensorConfig
from agent.errors import StartError
from agent.outbox import Outbox
from agent.processing import KERNELS, Processor, ValueBoard, make_processor
from agent.realtime import RealtimePolicy, promote_reader, restore_process, tune_process
from agent.records import Emit
from agent.stats import Stats
from hal.sources import HalContext, open_source
from hal.types import Block, Quality, Reading, now_ns

log = logging.getLogger("edge_agent.pipeline")

# systemd/edge-agent.service: TimeoutStopSec=45. The stop keeps 5 s of margin for the process exit.
# Split: readers 5 s + processing 5 s + commands (capture_max_s + 5, only with a capture running) + outbox flush
# (<= 10 s, skipped while it cannot write) + uplink drain (what is left minus 20 s) + uplink close (<= connect
# timeout + 2 s) + outbox stop (<= 4 s, then what is not committed is counted and saved).
STOP_BUDGET_S = 40.0


@dataclass
class _Item:
    sensor: str
    data: Block | list[Reading]


_KERNELS_READY = _Item("", [])  # put on the processing queue when the kernels have loaded


class Reader(threading.Thread):
    """Reads one sensor and hands what it gets to the processing queue. Never dies of a sensor fault."""

    def __init__(self, sensor: SensorConfig, context: HalContext, out: queue.Queue[_Item], stats: Stats,
                 stop: threading.Event, realtime: RealtimePolicy | None = None) -> None:
        super().__init__(name=f"reader-{sensor.name}", daemon=True)
        self.realtime = realtime or RealtimePolicy.off()
        self.scheduling = "default"
        self.sensor = sensor
        self.context = context
        self.out = out
        self.stats = stats
        self.stop_event = stop
        try:
            self.source = open_source(sensor.driver, sensor.name, sensor.options, context, bus=sensor.bus)
        except OSError as e:  # an OS error without context ("No such device") says nothing about where
            bus = context.buses.get(sensor.bus, {}) if sensor.bus else {}
            where = (f" on bus {sensor.bus} ({bus.get('type', '?')}, "
                     f"{'emulated' if context.emulate or bus.get('backend') == 'emulated' else 'real'})"
                     if sensor.bus else "")
            raise StartError(f"{sensor.path or 'sensor'} {sensor.name!r} (driver {sensor.driver}){where}: cannot "
                             f"open its driver: {type(e).__name__}: {e}") from e

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


RELOAD_MIN_INTERVAL_S = 5.0  # reloads that restart sensors: at most one per this many seconds
MAX_CAPTURES = 4  # raw captures in progress at once (command and status socket together)
MAX_CAPTURE_BYTES = 32 * 1024 * 1024  # their raw samples held in memory at once, estimated as float64 x 3 axes


class CaptureBusy(RuntimeError):
    """Too many captures (or too many samples) in progress: try again when one has finished."""


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


def _private_dir(path: Path) -> None:
    """Create the state directory 0700 (the outbox holds plant data); an existing one loses its world bits."""
    try:
        if not path.exists():
            path.mkdir(mode=0o700, parents=True)
        elif path.stat().st_mode & 0o007 and path.stat().st_uid == os.getuid():
            path.chmod(path.stat().st_mode & 0o770)
            log.warning("state directory %s was world-accessible; removed the world permissions", path)
    except (OSError, ValueError) as e:  # the outbox reports a directory it cannot use, naming it
        log.debug("state directory %s: %s", path, e)


def _private_files(db: Path) -> None:
    """The outbox database and its WAL/SHM files: owner read/write only."""
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        try:
            if p.exists() and p.stat().st_mode & 0o077:
                p.chmod(0o600)
        except OSError as e:
            log.debug("outbox file %s: %s", p, e)


def _capture_bytes(samples: int) -> int:
    return samples * 3 * 8


class Pipeline:
    """The agent's pipeline: readers, processing, outbox and uplink of one configuration. `start()`, then `stop()`;
    `reload()` swaps the configuration while running. The process around it (signals, systemd, the main loop) is
    `agent.app`."""

    def __init__(self, config: Config, state_dir: Path, *, config_path: str | None = None, clock: object = None,
                 plant: object = None, realtime: RealtimePolicy | None = None, acquire_early: bool = False) -> None:
        """`acquire_early`: start reading each stream sensor as soon as its driver is built, before the other
        drivers, the outbox and the uplink (`start()` then starts the rest); its first window needs a window's
        worth of samples whatever else is ready. Without it, nothing runs before `start()`."""
        self.config = config
        self._acquire_early = acquire_early
        self._running: set[int] = set()  # id() of the readers started early
        self.realtime = RealtimePolicy() if realtime is None else realtime  # the readers' real-time budget
        self._switch_interval: float | None = None
        self.clock = clock  # hal.clock for the sensors (None: real time); a scaled clock runs emulation faster
        self.plant = plant  # the emulated plant to use (None: each HalContext makes its own)
        self.config_path = config_path
        self.state_dir = state_dir
        self.stats = Stats()
        self.boot_ns = now_ns()
        _private_dir(state_dir)
        self.outbox = Outbox(state_dir, config.outbox, self.stats)
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=1000)
        self._captures: list[CaptureRequest] = []
        self._captures_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._last_reload = -1e9
        self.reload_min_interval_s = RELOAD_MIN_INTERVAL_S
        self.commands = None
        self._build_acquisition(config)  # with acquire_early, the stream sensors are read from here on
        try:
            from agent.uplink import Uplink  # paho and its imports (~0.1 s): after the stream sensors started

            self.uplink = Uplink(config, self.outbox, self.stats, boot_ns=self.boot_ns)
        except BaseException:
            self._stop_early_readers()
            raise
        self.started = threading.Event()

    def _stop_early_readers(self) -> None:
        """Stop the readers `acquire_early` started (construction failed after them)."""
        self._stop_readers([r for r in self.readers if id(r) in self._running])
        self._running.clear()

    def _build_acquisition(self, config: Config) -> None:
        """Drivers, readers and processors for `config` (constructed, not started). Raises on a driver error."""
        self.context = HalContext(emulate=config.emulate, buses=config.buses, plant=self.plant, clock=self.clock)
        self.board = ValueBoard()  # recent slow values (a tachometer's shaft speed) for this pipeline's windows
        self.processors: dict[str, Processor] = {s.name: make_processor(s, self.board, background=True)
                                                for s in config.sensors}  # kernels load while acquisition runs
        self._reader_stops: dict[str, threading.Event] = {}
        early, self._acquire_early = self._acquire_early, False  # the first build only (a reload starts at once)
        built: dict[str, Reader] = {}
        try:
            for s in sorted(config.sensors, key=lambda s: s.kind != "stream"):  # stream sensors first
                built[s.name] = self._make_reader(s)
                if early and s.kind == "stream":  # samples flow into the (bounded) queue until processing starts
                    if self._switch_interval is None:
                        self._switch_interval = tune_process(self.realtime)
                    built[s.name].start()
                    self._running.add(id(built[s.name]))
        except BaseException:
            self._stop_readers([r for r in built.values() if id(r) in self._running])
            self._running.clear()
            raise
        self.readers = [built[s.name] for s in config.sensors]
        self._new_processing()
        if any(s.kind == "stream" for s in config.sensors):
            KERNELS.on_done(self._wake_processing)

    def _wake_processing(self) -> None:
        try:
            self._queue.put_nowait(_KERNELS_READY)
        except queue.Full:  # blocks are flowing: the next one drains what waited
            pass

    def _make_reader(self, sensor: SensorConfig) -> Reader:
        # A stream sensor is read at once, while the kernels load (KernelLoader turns the garbage collector off
        # meanwhile: its full passes were the longest GIL stalls, 30-120 ms against the ADXL345's 40 ms FIFO);
        # the windows that complete before the kernels are ready wait in its processor.
        stop = threading.Event()
        process = {"thread": False, "process": True}.get(sensor.acquisition, self.realtime.process)  # config first
        if process is None:  # real buses only: an emulated chip in another process would not see our plant
            table = self.context.buses.get(sensor.bus or "") or {}
            process = not (self.context.emulate or sensor.driver.startswith("emulated.")
                           or table.get("backend", "real") == "emulated")
        if sensor.kind == "stream" and process:  # its own process and GIL (agent.acquisition)
            from agent.acquisition import ProcessReader

            def deliver(block: Block, name: str = sensor.name) -> None:
                try:
                    self._queue.put_nowait(_Item(name, block))
                except queue.Full:
                    self.stats.inc("processing_queue_full")
                    self.stats.inc(f"dropped.{name}")
            reader: Reader = ProcessReader(sensor, self.context, deliver, self.stats, stop,  # type: ignore
                                           self.realtime)
        else:
            reader = Reader(sensor, self.context, self._queue, self.stats, stop, self.realtime)
        self._reader_stops[sensor.name] = stop
        return reader

    def _new_processing(self) -> None:
        self._stop_processing = threading.Event()
        self._handoff = threading.Event()
        self._processing = threading.Thread(target=self._process,
                                            args=(self._stop_processing, self.processors, self._handoff),
                                            name="processing", daemon=True)

    def _start_acquisition(self) -> None:
        if any(s.kind == "stream" for s in self.config.sensors) and self._switch_interval is None:
            self._switch_interval = tune_process(self.realtime)
        self._processing.start()
        for r in self.readers:
            if id(r) not in self._running:
                r.start()
        self._running.clear()

    def _stop_readers(self, readers: list[Reader]) -> None:
        for r in readers:
            self._reader_stops[r.sensor.name].set()
        deadline = time.monotonic() + 5.0  # all readers together: the stop budget (see stop()) is shared
        for r in readers:
            r.join(max(0.0, deadline - time.monotonic()))
            if r.is_alive():
                log.error("sensor %s did not stop within 5 s (a driver stuck in a read?)", r.sensor.name)

    def _stop_processing_thread(self) -> None:
        self._stop_processing.set()
        if self._processing.is_alive():
            self._processing.join(5.0)

    def _stop_acquisition(self) -> None:
        """Stop the readers, then let processing finish what they delivered."""
        self._stop_readers(self.readers)
        self._stop_processing_thread()
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
        _private_files(self.outbox.path)
        self._attach_commands()
        self.uplink.describe(self.config, self._sources())
        self.uplink.start()
        self._start_acquisition()
        self.started.set()
        log.info("edge-agent running: agent %s, %d sensors, outbox %s, broker %s", self.config.agent.id,
                 len(self.readers), self.outbox.path, self.config.mqtt.broker.url)

    def _sources(self) -> dict[str, object]:
        """The drivers of the running configuration, by sensor name (they declare their channels)."""
        return {r.sensor.name: r.source for r in self.readers}

    def queue_depths(self) -> dict[str, int]:
        """Items waiting between the stages (for health and status)."""
        return {"processing": self._queue.qsize(), "outbox": self.outbox.queue_depth()}

    def _emit(self, emits: list[Emit]) -> None:
        self.outbox.put_many(emits)  # one hand-off per batch; a full queue counts what it refuses, per record

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
            held = sum(_capture_bytes(c.samples_needed) for c in self._captures)
            if len(self._captures) >= MAX_CAPTURES or held + _capture_bytes(req.samples_needed) > MAX_CAPTURE_BYTES:
                self.stats.inc("captures_refused")
                raise CaptureBusy(f"busy: {len(self._captures)} captures in progress (at most {MAX_CAPTURES}, "
                                  f"{MAX_CAPTURE_BYTES // 2**20} MB of samples); try again when one has finished")
            self._captures.append(req)
        return req

    def capture(self, sensor: str, seconds: float, timeout_s: float) -> Emit:
        """Record `seconds` of raw samples of a stream sensor (the `capture` record is also committed to the outbox
        and published). Raises ValueError for a sensor that cannot be captured, CaptureBusy beyond MAX_CAPTURES or
        MAX_CAPTURE_BYTES, TimeoutError when the samples do not arrive within `timeout_s`."""
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

    def _process(self, stop: threading.Event, processors: dict[str, Processor],
                 handoff: threading.Event | None = None) -> None:
        """Until `stop` is set and the queue is empty; or, once `handoff` is set, at once (a reload hands the queue
        to the next processing thread)."""
        clock = self.context.clock  # ticks every 0.5 s of sensor time (plant time when emulating faster)
        last_tick = clock.monotonic()
        while True:
            self.stats.progress("processing")
            if handoff is not None and handoff.is_set():
                break
            try:
                item = self._queue.get(timeout=0.25)
            except queue.Empty:
                item = None
                if stop.is_set():
                    break
            if item is _KERNELS_READY:  # compute the windows that waited for the kernels now, not at a tick
                for name, proc in processors.items():
                    drain = getattr(proc, "drain", None)
                    try:
                        if drain is not None:
                            self._emit(drain())
                    except Exception as e:
                        self.stats.inc(f"processing_errors.{name}")
                        log.exception("processing %s failed: %s", name, e)
            elif item is not None:
                self._process_item(item, processors)
            if clock.monotonic() - last_tick >= 0.5:
                last_tick = clock.monotonic()
                t = clock.time_ns()
                for name, proc in processors.items():
                    try:
                        self._emit(proc.tick(t))
                    except Exception as e:
                        self.stats.inc(f"processing_errors.{name}")
                        log.exception("processing %s (tick) failed: %s", name, e)

    def _process_item(self, item: _Item, processors: dict[str, Processor]) -> None:
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

    def reload(self, path: str | None = None) -> tuple[bool, str]:
        """Re-read the configuration. A bad one is rejected and the running one kept; returns (ok, message).

        Sensors whose settings changed are rebuilt, unchanged ones keep running (and keep their partial windows)
        unless the buses changed; the uplink reconnects if the broker settings or the agent id changed; the outbox
        settings apply at the next start. At most one reload per `reload_min_interval_s` (a refused one says so);
        a rejected configuration does not count.
        """
        from agent.config import load, load_demo
        from agent.errors import ConfigError

        with self._reload_lock:
            since = time.monotonic() - self._last_reload
            if since < self.reload_min_interval_s:
                self.stats.inc("reloads_refused")
                message = (f"reload refused: the last reload was {since:.1f} s ago; expected at most one every "
                           f"{self.reload_min_interval_s:g} s (each restarts the changed sensors); try again in "
                           f"{self.reload_min_interval_s - since:.1f} s")
                log.warning("%s", message)
                return False, message
            source = path or self.config_path
            try:
                new = load(source, emulate=self.config.emulate) if source else load_demo(emulate=True)
            except ConfigError as e:
                self.stats.inc("reloads_rejected")
                log.error("reload rejected, keeping the running configuration:\n%s", e)
                return False, str(e)
            old_config = self.config
            self._last_reload = time.monotonic()
            try:
                kept, started = self._swap_acquisition(old_config, new)
            except Exception as e:
                self.stats.inc("reloads_rejected")
                log.error("reload rejected (%s: %s), keeping the running configuration", type(e).__name__, e)
                self._stop_acquisition()
                self._build_acquisition(old_config)
                self._start_acquisition()
                return False, f"{type(e).__name__}: {e}"
            self.config = new
            if source:
                self.config_path = source
            if new.mqtt != old_config.mqtt or new.agent.id != old_config.agent.id or \
                    new.commands != old_config.commands:
                self.uplink.stop(drain_s=1.0)
                from agent.uplink import Uplink
                self.uplink = Uplink(new, self.outbox, self.stats, boot_ns=self.boot_ns)
                if self.commands is not None:
                    self.commands.stop()
                    self.commands = None
                self._attach_commands()
                self.uplink.describe(new, self._sources())
                self.uplink.start()
            else:
                self.uplink.describe(new, self._sources())  # Sparkplug: a full rebirth before the new sensors' data
            if started is None:
                self._start_acquisition()
            else:  # unchanged sensors never stopped; the new and changed ones start after the rebirth
                for r in started:
                    r.start()
            note = " (outbox settings apply at the next start)" if new.outbox != old_config.outbox else ""
            if kept:
                note += f"; unchanged sensors kept running: {', '.join(kept)}"
            self.stats.inc("reloads")
            log.info("configuration reloaded from %s (sha256 %s)%s", new.source, new.digest, note)
            return True, f"reloaded {new.source} (sha256 {new.digest}){note}"

    def _swap_acquisition(self, old: Config, new: Config) -> tuple[list[str], list[Reader] | None]:
        """Replace the acquisition of `old` by that of `new`. When the buses are the same, only the readers of
        changed, added or removed sensors restart: an unchanged sensor keeps its reader, its driver and its
        processor, so its partial feature window survives the reload. Returns (the names kept, the readers the
        caller starts; None: start the whole acquisition). Raises (with acquisition stopped or half-swapped: the
        caller rebuilds the old one) when a new driver cannot be made."""
        if new.buses != old.buses or new.emulate != old.emulate:
            self._stop_acquisition()
            self._build_acquisition(new)
            return [], None
        old_by_name = {s.name: s for s in old.sensors}
        keep = {s.name for s in new.sensors if old_by_name.get(s.name) == s}
        going = [r for r in self.readers if r.sensor.name not in keep]
        self._stop_readers(going)
        self._handoff.set()  # processing holds the processors dict: stop it now, restart it below with the new one
        self._processing.join(10.0)
        if self._processing.is_alive():
            raise RuntimeError("the processing thread did not stop within 10 s")
        while True:  # what is queued is finished here, in order, by the processors it was read for (old ones)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._process_item(item, self.processors)
        readers = {r.sensor.name: r for r in self.readers if r.sensor.name in keep}
        started: list[Reader] = []
        for s in new.sensors:
            if s.name not in keep:
                readers[s.name] = self._make_reader(s)
                started.append(readers[s.name])
        self.processors = {s.name: self.processors[s.name] if s.name in keep
                           else make_processor(s, self.board, background=True) for s in new.sensors}
        self.readers = [readers[s.name] for s in new.sensors]
        self._new_processing()
        self._processing.start()  # the kept readers' data flows on; the caller starts `started`
        return [s.name for s in new.sensors if s.name in keep], started

    def stop(self, drain_s: float = 3.0) -> None:
        """Stop acquisition, process what was read, commit it all, publish for up to `drain_s`, close; within
        STOP_BUDGET_S in every state (the broker away, the disk full): `drain_s` is cut to what the budget leaves."""
        t0 = time.monotonic()
        end = t0 + STOP_BUDGET_S

        def left() -> float:
            return end - time.monotonic()

        log.info("stopping: flushing the outbox")
        self._stop_acquisition()  # readers <= 5 s together, processing <= 5 s
        if self.commands is not None:
            self.commands.stop()
        # commit what acquisition delivered (no waiting while the outbox cannot write: stop() counts it instead)
        if self.outbox.fault is None and not self.outbox.flush(max(0.5, min(10.0, left() - 25.0))):
            log.error("could not commit every record before shutdown: %s", self.outbox.fault or "timeout")
        # publish for up to drain_s, keeping 20 s for the uplink's close (a connect in progress, the offline status)
        # and the outbox's
        drain = max(0.0, min(drain_s, left() - 20.0))
        if drain < drain_s:
            log.warning("publishing for %.1f s rather than %g s at shutdown, to stop within %g s (TimeoutStopSec)",
                        drain, drain_s, STOP_BUDGET_S + 5)
        self.uplink.stop(drain)
        self.outbox.stop(timeout=max(1.0, min(4.0, left() - 1.0)))
        at_stop = int(self.stats.get("outbox_lost_at_shutdown") or 0)
        text = f"{self.outbox.depth} records left in the outbox for the next start"
        if at_stop:
            text += f"; {at_stop} records could not be committed at shutdown ({self.outbox.lost_saved})"
        if self.outbox.lost_total:
            text += (f"; {self.outbox.lost_total} records in all were not committed during this run, each counted "
                     f"in a not_committed gap event")
        log.log(logging.WARNING if self.outbox.lost_total else logging.INFO, "stopped in %.1f s: %s",
                time.monotonic() - t0, text)

