"""Per-sensor processing: turns what a source delivers into records (`Emit`s) for the outbox.

Streams (each carries one kind; docs/signal.md lists every payload):

* stream sensors: blocks → windows (`agent.windows`) → feature kernels (`agent.signal`) → one `features` record
  per window on `<sensor>`; with `features.state`, a time-in-state report (`features`) on `<sensor>.state`;
  state changes, zone changes and anomalies as `event`s on `<sensor>.events`;
* slow sensors: readings → `reading` records on `<channel>` (every reading, or by exception with a deadband
  and heartbeat; counters carry deltas); with `features.aggregate_s`, interval statistics (`features`) on
  `<channel>.stats`; with `features.state`, `<channel>.state` reports; events on `<channel>.events`.

A processor is plain, single-threaded code called by the pipeline's processing thread; it does no I/O. `tick`
is called about every 0.5 s with the wall clock; interval reports, heartbeats and state reports happen there.
Processors of one pipeline share a `ValueBoard`, through which a stream sensor reads the shaft speed from a
tachometer sensor. Numba is imported when the first stream processor is built, not when this module is: by
`KERNELS`, on a thread of its own when the pipeline asks for it (`background=True`), so the stream sensors are
read and the rest of start-up runs while they load (the first window needs its samples anyway). Windows that
complete before they are ready wait in the processor (bounded) and are computed as soon as they are (`drain()`,
which the pipeline calls from `KERNELS.on_done`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from agent.config import SensorConfig
from agent.errors import ConfigError
from agent.records import Emit
from agent.signal import iso
from agent.signal.schema import validate_features
from agent.signal.slow import NS, AnomalyDetector, Counter, Deadband, IntervalStats, MachineState, is_number
from agent.windows import Window, Windower
from hal.types import Block, Quality, Reading

log = logging.getLogger("edge_agent.processing")

DEFAULT_HEARTBEAT_S = 300.0
ZONE_WINDOWS = 3  # windows a new ISO zone must hold before a zone event
PENDING_WINDOWS = 64  # windows a stream processor keeps while the kernels load; older ones are dropped and counted


class KernelLoader:
    """Imports the Numba kernels and loads their machine code (from the cache when it is warm, else compiling)
    once per process, on a thread of its own, so that the rest of the agent starts meanwhile; then pages out the
    LLVM library (`release_compiler_pages`).

    `start()` is idempotent and returns at once; `ready()` says whether the kernels are usable; `wait()` blocks
    until they are and returns the `Analyzer` class, or raises RuntimeError when loading failed.
    `agent.signal.cache.configure_cache()` must run before `start()`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.done = threading.Event()  # set when loaded, or when loading failed
        self._analyzer_class: Any = None
        self.error: BaseException | None = None
        self.seconds: float | None = None
        self._callbacks: list[Any] = []

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._load, name="kernel-load", daemon=True)
                self._thread.start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        # No garbage collection while Numba loads: its imports make ~140k objects, so the collector runs a few
        # hundred times and its full passes hold the GIL for 30-120 ms each (a reader draining a 40 ms FIFO
        # meanwhile loses samples), for ~1k objects of garbage. Afterwards the survivors are frozen (never scanned
        # again): later full collections stay short too.
        collecting = gc.isenabled()
        gc.disable()
        try:
            from agent.signal.analyzer import Analyzer  # imports Numba

            # analyze_window has one signature whatever the settings: one call loads (or compiles) all of it
            Analyzer({}, 1000.0, 64).compute(np.zeros((64, 1)))
            self._analyzer_class = Analyzer
        except BaseException as e:  # reported to every processor that waits on it
            self.error = e
            log.error("loading the feature kernels failed: %s: %s", type(e).__name__, e)
        finally:
            if collecting:
                gc.freeze()
                gc.enable()
            self.seconds = time.perf_counter() - t0
            with self._lock:
                self.done.set()
                callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:  # a callback's failure is its own; the kernels are loaded all the same
                    log.exception("kernel-ready callback failed")
            if self.error is None:
                age = process_age_s()
                log.info("feature kernels ready in %.2f s%s", self.seconds,
                         f" ({age:.2f} s after the process started)" if age is not None else "")
        if self.error is None:  # after `done` (~0.2 s): the windows that waited need not wait for it too
            released = release_compiler_pages()
            if released:
                log.debug("paged out %.0f MB of the LLVM library (needed again only to compile)", released / 2**20)

    def on_done(self, callback: Any) -> None:
        """Call `callback()` (from the loading thread) once the kernels are loaded or failed to load; at once when
        they are already. The pipeline uses it to compute the windows that waited, without waiting for a tick."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def ready(self) -> bool:
        """The kernels are loaded, or loading failed (then `wait()` raises)."""
        return self.done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        self.start()
        if not self.done.wait(timeout):
            raise TimeoutError(f"the feature kernels did not load within {timeout:g} s")
        if self.error is not None:
            raise RuntimeError(f"the feature kernels could not be loaded: {type(self.error).__name__}: "
                               f"{self.error}") from self.error
        return self._analyzer_class


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc/self/stat against CLOCK_BOOTTIME, 10 ms resolution);
    None where that is not available."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


_MADV_PAGEOUT = 21  # Linux >= 5.4


def release_compiler_pages(library: str = "libllvmlite.so") -> int:
    """Ask Linux to page out the resident pages of LLVM's shared library; returns the bytes of RSS released.

    LLVM is needed to compile a kernel and to load one from the cache, not to run it: once the kernels are
    ready, its ~60-70 MB of file-backed pages only inflate the resident set (and the unit's memory accounting).
    MADV_PAGEOUT reclaims the clean ones (read-only mappings: nothing goes to swap); should LLVM run again (a
    compile), they are read back from disk. Best effort:
    does nothing (returns 0) where the call or /proc is not available.
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        before = _rss_bytes()
        with open("/proc/self/maps") as f:  # read-only mappings only: code and constants, never written state
            ranges = [tuple(int(v, 16) for v in line.split()[0].split("-")) for line in f
                      if line.rstrip().endswith(library) and "w" not in line.split()[1]]
        for lo, hi in ranges:
            madvise(lo, hi - lo, _MADV_PAGEOUT)
        return max(0, before - _rss_bytes()) if ranges else 0
    except (OSError, AttributeError, ValueError):
        return 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


KERNELS = KernelLoader()  # one per process: loading is per process, not per pipeline


class Processor(Protocol):
    def on_block(self, block: Block) -> list[Emit]: ...
    def on_reading(self, reading: Reading) -> list[Emit]: ...
    def tick(self, now_ns: int) -> list[Emit]: ...


class ValueBoard:
    """Recent good numeric values of each slow channel, shared by the processors of one pipeline.

    A stream processor asks for the value nearest in time to its window, so a window that waited in the queue
    still gets the shaft speed of its own moment, also while the machine runs up.
    """

    HISTORY = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, deque[tuple[int, float, str]]] = {}

    def post(self, channel: str, ts_ns: int, value: float, unit: str = "") -> None:
        with self._lock:
            history = self._values.get(channel)
            if history is None:
                history = self._values[channel] = deque(maxlen=self.HISTORY)
            history.append((ts_ns, float(value), unit))

    def get(self, channel: str, ts_ns: int | None = None) -> tuple[int, float, str] | None:
        """(ts_ns, value, unit) of the reading nearest to `ts_ns` (the latest without it), or None."""
        with self._lock:
            history = self._values.get(channel)
            if not history:
                return None
            if ts_ns is None:
                return history[-1]
            return min(history, key=lambda h: abs(h[0] - ts_ns))


# Used when the pipeline does not pass its own board (one board per pipeline is the intended wiring).
DEFAULT_BOARD = ValueBoard()


def _validated(sensor: SensorConfig) -> dict[str, Any]:
    values, errors = validate_features(sensor.kind, sensor.features)
    if errors:
        where = sensor.path or sensor.name
        raise ConfigError([f"{where}.features{'.' + k if k else ''}: {m}" for k, m in errors])
    return values


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, (np.floating, np.integer, np.bool_)) else value


class StateReporter:
    """Machine state plus its periodic time-in-state report, for either kind of sensor."""

    def __init__(self, settings: Mapping[str, Any], stream: str) -> None:
        self.machine = MachineState(settings["off_below"], settings["running_above"], settings["hysteresis"],
                                    settings["min_dwell_s"])
        self.source = settings["source"]
        self.period_ns = int(settings["report_s"] * NS)
        self.stream = stream
        self._next_ns: int | None = None
        self._reported = self.machine.totals_ns()

    def observe(self, ts_ns: int, value: float, events_stream: str) -> list[Emit]:
        if self._next_ns is None:
            self._next_ns = (ts_ns // self.period_ns + 1) * self.period_ns
        t = self.machine.observe(ts_ns, value)
        if t is None:
            return []
        payload = {"event": "state", "state": t.state, "previous": t.previous, "value": t.value,
                   "previous_s": t.previous_s}
        return [Emit("event", events_stream, t.since_ns, payload)]

    def tick(self, now_ns: int) -> list[Emit]:
        if self._next_ns is None:
            self._next_ns = (now_ns // self.period_ns + 1) * self.period_ns
            return []
        if now_ns < self._next_ns:
            return []
        start = self._next_ns - self.period_ns
        self._next_ns = (now_ns // self.period_ns + 1) * self.period_ns
        totals = self.machine.totals_ns()
        spent = {s: (totals[s] - self._reported[s]) / NS for s in totals}
        self._reported = totals
        observed = sum(spent.values())
        payload: dict[str, Any] = {"state": self.machine.state, "interval_s": self.period_ns / NS}
        payload.update({f"{s}_s": round(v, 3) for s, v in spent.items()})
        payload["availability"] = round(spent["running"] / observed, 6) if observed > 0 else None
        return [Emit("features", self.stream, start, payload)]


class StreamFeatures:
    """Windows a high-rate sensor and computes its features per window and axis.

    `background=False` (the default) waits for the kernels in the constructor; `background=True` (the pipeline)
    returns at once and keeps completed windows (up to PENDING_WINDOWS, the oldest dropped and reported as
    `gap_before` of the next record) until the kernels are ready, computing them at the next block or tick.
    """

    def __init__(self, sensor: SensorConfig, board: ValueBoard | None = None, *, background: bool = False) -> None:
        self.sensor = sensor
        self.settings = _validated(sensor)
        self.board = board if board is not None else DEFAULT_BOARD
        self.windower = Windower(sensor.window, sensor.hop)
        self.events_stream = f"{sensor.name}.events"
        self._analyzers: dict[float, Any] = {}
        self._pending: deque[tuple[Window, tuple[str, ...], str]] = deque()
        self._dropped_samples = 0  # samples of pending windows dropped while the kernels loaded
        s = self.settings
        self.state = StateReporter(s["state"], f"{sensor.name}.state") if s["state"] else None
        a = s["anomaly"]
        self.anomaly = AnomalyDetector(a["z"], a["warmup"], a["adapt"]) if a else None
        self.watched = tuple(a.get("features") or ("rms", "kurtosis", "velocity_rms")) if a else ()
        self.zone: str | None = None
        self._zone_candidate: tuple[str, int, int] | None = None
        self.windows = 0
        KERNELS.start()
        if not background:
            KERNELS.wait()
            rate = sensor.options.get("rate_hz")
            if is_number(rate) and rate > 0:  # build the plan now, not at the first window
                self.analyzer(float(rate))

    def analyzer(self, rate_hz: float) -> Any:
        an = self._analyzers.get(rate_hz)
        if an is None:
            an = self._analyzers[rate_hz] = KERNELS.wait()(self.settings, rate_hz, self.sensor.window)
        return an

    def shaft_hz(self, ts_ns: int) -> float | None:
        s = self.settings
        if s["shaft_hz"]:
            return float(s["shaft_hz"])
        if not s["tachometer"]:
            return None
        got = self.board.get(s["tachometer"], ts_ns)
        if got is None or abs(ts_ns - got[0]) > s["tachometer_max_age_s"] * NS or not got[1] > 0:
            return None
        ts, value, unit = got
        return value / 60.0 if unit.lower() in ("rpm", "1/min", "r/min") else value

    def on_block(self, block: Block) -> list[Emit]:
        windows = self.windower.push(block)
        if self._pending or not KERNELS.ready():
            self._pending.extend((w, block.axes, block.unit) for w in windows)
            while len(self._pending) > PENDING_WINDOWS:
                dropped, _, _ = self._pending.popleft()
                self._dropped_samples += dropped.gap_before + dropped.samples.shape[0]
            return self._drain()
        out: list[Emit] = []
        for w in windows:
            out.extend(self._window(w, block.axes, block.unit))
        return out

    def drain(self) -> list[Emit]:
        """Compute the windows that waited for the kernels, once they are ready (nothing before)."""
        return self._drain() if self._pending else []

    def _drain(self) -> list[Emit]:
        """Compute the windows that waited for the kernels, once they are ready."""
        out: list[Emit] = []
        if not KERNELS.ready():
            return out
        if KERNELS.error is not None:
            self._pending.clear()  # every window would fail the same way; the error is raised (and counted) below
            KERNELS.wait()
        while self._pending:
            w, axes, unit = self._pending.popleft()
            if self._dropped_samples:
                w = dataclasses.replace(w, gap_before=w.gap_before + self._dropped_samples)
                self._dropped_samples = 0
            out.extend(self._window(w, axes, unit))
        return out

    def _window(self, w: Window, block_axes: tuple[str, ...], unit: str) -> list[Emit]:
        out: list[Emit] = []
        an = self.analyzer(w.rate_hz)
        shaft = self.shaft_hz(w.t0_ns)
        axes = block_axes if len(block_axes) == w.samples.shape[1] else tuple(
            f"ch{k}" for k in range(w.samples.shape[1]))  # a driver that names its axes wrongly loses none
        features = an.features(w.samples, axes, shaft)
        payload: dict[str, Any] = {"unit": unit, "rate_hz": w.rate_hz, "n": int(w.samples.shape[0]),
                                   "features": features}
        payload.update(an.context(shaft))
        if w.gap_before:
            payload["gap_before"] = w.gap_before
        zone = iso.worst([f.get("zone") for f in features.values()]) if an.zone_limits else None
        if zone:
            payload["zone"] = zone
        out.append(Emit("features", self.sensor.name, w.t0_ns, payload, w.quality))
        self.windows += 1
        if w.quality == Quality.BAD:
            return out
        if zone:
            out.extend(self._zone(zone, w.t0_ns, w.quality))
        if self.state is not None:
            levels = [f.get(self.state.source) for f in features.values()]
            levels = [v for v in levels if is_number(v) and math.isfinite(v)]
            if levels:
                out.extend(self.state.observe(w.t0_ns, max(levels), self.events_stream))
        if self.anomaly is not None:
            for axis, f in features.items():
                for name in self.watched:
                    if name in f:
                        ev = self.anomaly.observe(f"{axis}.{name}", f[name])
                        if ev:
                            out.append(Emit("event", self.events_stream, w.t0_ns, ev, w.quality))
        return out

    def _zone(self, zone: str, ts_ns: int, quality: Quality) -> list[Emit]:
        """A zone change is reported once the new zone has held for ZONE_WINDOWS windows in a row."""
        if zone == self.zone:
            self._zone_candidate = None
            return []
        if self.zone is None:
            self.zone = zone
            return []
        if self._zone_candidate is None or self._zone_candidate[0] != zone:
            self._zone_candidate = (zone, ts_ns, 0)
        z, since, count = self._zone_candidate
        self._zone_candidate = (z, since, count + 1)
        if count + 1 < ZONE_WINDOWS:
            return []
        previous, self.zone, self._zone_candidate = self.zone, zone, None
        return [Emit("event", self.events_stream, since, {"event": "zone", "zone": zone, "previous": previous},
                     quality)]

    def on_reading(self, reading: Reading) -> list[Emit]:
        return []

    def tick(self, now_ns: int) -> list[Emit]:
        out = self._drain() if self._pending else []
        if self.state is not None:
            out.extend(self.state.tick(now_ns))
        return out


class _Channel:
    """What a slow processor keeps per channel."""

    def __init__(self, channel: str, s: Mapping[str, Any]) -> None:
        self.channel = channel
        db, pct = s["deadband"], s["deadband_pct"]
        self.deadband = Deadband(db, pct, s["heartbeat_s"] or DEFAULT_HEARTBEAT_S) if (db or pct) else None
        self.pending: Reading | None = None  # the latest reading held back by the deadband
        self.counter = Counter(s["rollover"]) if s["counter"] else None
        self.counter_started = False  # a delta needs two readings
        self.unpublished_delta: int | float = 0
        self.interval_delta: int | float = 0
        self.period_ns = int(s["aggregate_s"] * NS)
        self.stats = IntervalStats() if self.period_ns else None
        self.interval_start: int | None = None
        self.unit = ""
        self.state = StateReporter(s["state"], f"{channel}.state") if s["state"] else None
        a = s["anomaly"]
        self.anomaly = AnomalyDetector(a["z"], a["warmup"], a["adapt"]) if a else None
        self.events = f"{channel}.events"


class SlowReadings:
    """Publishes the readings of a slow sensor (all, or by exception) and what is derived from them."""

    def __init__(self, sensor: SensorConfig, board: ValueBoard | None = None) -> None:
        self.sensor = sensor
        self.settings = _validated(sensor)
        self.board = board if board is not None else DEFAULT_BOARD
        self.channels: dict[str, _Channel] = {}

    def _channel(self, name: str) -> _Channel:
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = _Channel(name, self.settings)
        return ch

    def _reading_emit(self, ch: _Channel, r: Reading, value: Any) -> Emit:
        payload: dict[str, Any] = {"value": value, "unit": r.unit}
        if r.error:
            payload["error"] = r.error
        if ch.counter is not None and ch.counter_started:
            payload["delta"] = ch.unpublished_delta
            payload["total"] = ch.counter.total
            ch.unpublished_delta = 0
        return Emit("reading", r.channel, r.ts_ns, payload, r.quality)

    def _close_interval(self, ch: _Channel, end_ns: int) -> list[Emit]:
        """Report the interval that ends at `end_ns` (if one is open) and open the one containing `end_ns`."""
        out: list[Emit] = []
        if ch.stats is None:
            return out
        if ch.interval_start is not None and end_ns >= ch.interval_start + ch.period_ns:
            payload = {"interval_s": ch.period_ns / NS, "unit": ch.unit, **ch.stats.summary()}
            if ch.counter is not None:
                payload["delta"] = ch.interval_delta
            q = (Quality.BAD if not ch.stats.count else Quality.UNCERTAIN if ch.stats.bad else Quality.GOOD)
            out.append(Emit("features", f"{ch.channel}.stats", ch.interval_start, payload, q))
            ch.stats.reset()
            ch.interval_delta = 0
            ch.interval_start = None
        if ch.interval_start is None:
            ch.interval_start = end_ns // ch.period_ns * ch.period_ns
        return out

    def on_block(self, block: Block) -> list[Emit]:
        return []

    def on_reading(self, reading: Reading) -> list[Emit]:
        r = reading
        value = _plain(r.value)
        ch = self._channel(r.channel)
        ch.unit = r.unit or ch.unit
        out = self._close_interval(ch, r.ts_ns)
        good = r.quality != Quality.BAD and value is not None
        numeric = good and is_number(value) and math.isfinite(value)
        if numeric:
            self.board.post(r.channel, r.ts_ns, value, r.unit)
        if ch.counter is not None and numeric:
            delta = ch.counter.update(value)
            if delta is not None:
                ch.counter_started = True
                ch.unpublished_delta += delta
                ch.interval_delta += delta
        if ch.stats is not None:
            if numeric:
                ch.stats.add(value)
            elif not good:
                ch.stats.bad += 1
        if numeric and ch.state is not None:
            out.extend(ch.state.observe(r.ts_ns, float(value), ch.events))
        if numeric and ch.anomaly is not None:
            ev = ch.anomaly.observe("value", float(value))
            if ev:
                out.append(Emit("event", ch.events, r.ts_ns, ev, r.quality))
        if ch.deadband is None or ch.deadband.offer(r.ts_ns, value, r.quality):
            ch.pending = None
            out.append(self._reading_emit(ch, r, value))
        else:
            ch.pending = r
        return out

    def tick(self, now_ns: int) -> list[Emit]:
        out: list[Emit] = []
        for ch in self.channels.values():
            out.extend(self._close_interval(ch, now_ns))
            if ch.deadband is not None and ch.pending is not None and ch.deadband.silent_too_long(now_ns):
                r, ch.pending = ch.pending, None
                value = _plain(r.value)
                ch.deadband.mark(r.ts_ns, value, r.quality)
                out.append(self._reading_emit(ch, r, value))
            if ch.state is not None:
                out.extend(ch.state.tick(now_ns))
        return out


def make_processor(sensor: SensorConfig, board: ValueBoard | None = None, *, background: bool = False) -> Processor:
    """The processor of one sensor. Pass one `ValueBoard` per pipeline (a tachometer is found through it);
    `background=True`: a stream processor does not wait for the kernels to load (see `StreamFeatures`)."""
    if sensor.kind == "stream":
        return StreamFeatures(sensor, board, background=background)
    return SlowReadings(sensor, board)
