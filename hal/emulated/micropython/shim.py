"""CPython stand-ins for the MicroPython modules the sensor-node firmware uses, bound to one emulated board.

Owns: `machine` (Timer, ADC, Pin, WDT, UART, unique_id, reset_cause), `time` (ticks_*, sleep_*), `micropython`,
`sys` (stdin/stdout whose `.buffer` is the USB-CDC link), `select` (poll over that link) and `gc`. Each `Board`
builds a fresh set for each boot, so the firmware's module state never leaks between boots or between nodes.

Timing model: `Timer` callbacks run on a timer thread in batches (every `batch_s` it runs every tick that has fallen
due), and while a tick runs `time.ticks_us()` returns that tick's scheduled time, so the ADC samples the plant at the
exact instants a real timer would, even though CPython wakes up only every few ms. Everything else uses the real
monotonic clock. `ticks_*` wrap at 2**30 like the rp2 port.

Must not touch: anything outside the board (the plant is read, never changed).
"""

from __future__ import annotations

import itertools
import os
import select as _select
import sys as _sys
import threading
import time as _time
import types
from collections.abc import Callable
from typing import Any

import numpy as np

_batch_ids = itertools.count()

TICKS_PERIOD = 1 << 30
TICKS_MAX = TICKS_PERIOD - 1
TICKS_HALF = TICKS_PERIOD // 2

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
SOFT_RESET = 4


class Reset(BaseException):
    """Raised into the firmware's thread to reboot it (watchdog, machine.reset())."""

    cause = SOFT_RESET


class WatchdogReset(Reset):
    cause = WDT_RESET


class PowerOff(BaseException):
    """Raised into the firmware's thread to stop it for good (unplug, shutdown)."""


# ---- the analog front end -----------------------------------------------------------------------------------------


class AnalogFrontEnd:
    """What the board's ADC pins see, in volts, as a function of wall-clock time (ns).

    ADC0..2: an analog accelerometer per plant axis with `mv_per_unit` mV per m/s² around `zero_v`;
    ADC3: VSYS/3 (5 V USB supply); ADC4: the RP2040 temperature sensor (0.706 V at 27 °C, -1.721 mV/°C).
    """

    def __init__(self, plant: Any, mv_per_unit: float = 10.0, zero_v: float = 1.65, vref: float = 3.3) -> None:
        self.plant = plant
        self.mv_per_unit = mv_per_unit
        self.zero_v = zero_v
        self.vref = vref

    def volts(self, channel: int, wall_ns: np.ndarray) -> np.ndarray:
        if channel <= 2:
            t = (wall_ns - self.plant.epoch_ns) / 1e9
            return self.zero_v + self.plant.vibration(t, channel) * (self.mv_per_unit / 1000.0)
        if channel == 3:
            return np.full(wall_ns.shape, 5.0 / 3.0)
        chip_c = self.plant.ambient_c + 8.0
        return np.full(wall_ns.shape, 0.706 - (chip_c - 27.0) * 0.001721)

    def read_u16(self, channel: int, wall_ns: np.ndarray) -> np.ndarray:
        """12-bit conversion scaled to 16 bits as the rp2 port's read_u16() does: (raw << 4) | (raw >> 8)."""
        raw = np.clip(np.floor(self.volts(channel, wall_ns) / self.vref * 4096.0), 0, 4095).astype(np.int64)
        return (raw << 4) | (raw >> 8)


# ---- the link (USB-CDC) ---------------------------------------------------------------------------------------------


class Link:
    """The node's end of the serial link: a pty master fd. Writes never block for long: like USB-CDC with nobody
    reading, bytes the host does not take within `write_timeout_s` are dropped (counted in `tx_dropped`)."""

    def __init__(self, fd: int, write_timeout_s: float = 0.05) -> None:
        self.fd = fd
        self.write_timeout_s = write_timeout_s
        self.tx_bytes = 0
        self.tx_dropped = 0
        self.rx_bytes = 0
        self._lock = threading.Lock()
        self._corrupt = 0
        self._rng = np.random.default_rng()
        self.closed = False

    def readable(self, timeout_s: float = 0.0) -> bool:
        if self.closed:
            return False
        try:
            r, _, _ = _select.select([self.fd], [], [], timeout_s)
        except (OSError, ValueError):
            return False
        return bool(r)

    def read(self, n: int) -> bytes:
        if self.closed:
            return b""
        try:
            data = os.read(self.fd, n)
        except OSError:  # EAGAIN, or EIO: nobody has the other end open
            return b""
        self.rx_bytes += len(data)
        return data

    def write(self, data: bytes | bytearray) -> int:
        data = bytes(data)
        with self._lock:
            if self._corrupt and data:
                self._corrupt -= 1
                buf = bytearray(data)
                k = int(self._rng.integers(0, len(buf)))
                buf[k] ^= int(self._rng.integers(1, 256))
                data = bytes(buf)
            self._write(data)
        return len(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = _time.monotonic() + self.write_timeout_s
        while view and not self.closed:
            try:
                _, w, _ = _select.select([], [self.fd], [], max(0.0, deadline - _time.monotonic()))
                if not w:
                    break
                k = os.write(self.fd, view)
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                break
            self.tx_bytes += k
            view = view[k:]
        self.tx_dropped += len(view)

    # test hooks: line noise between frames, and corruption inside the next frames
    def inject(self, noise: bytes) -> None:
        with self._lock:
            self._write(bytes(noise))

    def corrupt_next(self, frames: int) -> None:
        with self._lock:
            self._corrupt += frames

    def close(self) -> None:
        self.closed = True


# ---- the board ----------------------------------------------------------------------------------------------------


class Board:
    """One emulated RP2040 board: clock, timers, ADC front end, watchdog, link, unique id.

    `checkpoint()` is called by every blocking shim call; it is where a hang is emulated.
    """

    def __init__(self, frontend: AnalogFrontEnd, uid: bytes, link: Link, batch_s: float = 0.005) -> None:
        self.frontend = frontend
        self.uid = bytes(uid)
        self.link = link
        self.batch_s = batch_s
        self.reset_cause = PWRON_RESET
        self.safe_mode = False  # SAFE_PIN held low
        self.hung = False
        self.pending: type[BaseException] | None = None  # Reset or PowerOff to raise at the next checkpoint
        self.wdt_deadline: float | None = None  # monotonic s
        self.timers: list[Timer] = []
        self.timer_errors = 0
        self._local = threading.local()
        self._mono0 = _time.monotonic()
        self._wall0_ns = _time.time_ns()
        self._lock = threading.Lock()

    # clock: µs since the board was created; a timer tick in progress overrides it in its thread
    def now_us(self) -> float:
        v = getattr(self._local, "virtual_us", None)
        return v if v is not None else (_time.monotonic() - self._mono0) * 1e6

    def wall_ns(self, t_us: np.ndarray) -> np.ndarray:
        return self._wall0_ns + np.asarray(t_us, dtype=np.float64) * 1e3

    def checkpoint(self) -> None:
        """Called by every shim call the main loop makes: delivers a pending reset or power-off, emulates a hang."""
        while True:
            if self.pending is not None:
                with self._lock:  # taken exactly once, by this thread or by the runner's watchdog
                    p, self.pending = self.pending, None
                if p is not None:
                    raise p()
            if not self.hung:  # a stuck main loop: only the watchdog (or power) gets out of here
                return
            _time.sleep(0.005)

    def stop_timers(self) -> None:
        with self._lock:
            timers, self.timers = self.timers, []
        for t in timers:
            t.deinit()

    def modules(self) -> dict[str, types.ModuleType]:
        """A fresh set of shim modules for one boot."""
        return _make_modules(self)


class Timer:
    """machine.Timer: a virtual periodic timer whose callbacks run on a timer thread, in batches."""

    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, board: Board, id: int = -1, **kwargs: Any) -> None:
        if id != -1:
            raise ValueError("rp2 supports only virtual timers (id -1)")
        self._board = board
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if kwargs:
            self.init(**kwargs)

    def init(self, *, mode: int = PERIODIC, freq: float = -1, period: int = -1, tick_hz: int = 1000,
             callback: Callable[[Any], None] | None = None, hard: bool = False) -> None:
        self.deinit()
        # as ports/rp2/machine_timer.c: a whole number of microseconds, truncated (freq=3200 runs every 312 us)
        if freq > 0:
            period_us = max(1, int(1e6 / freq))
        elif period > 0:
            period_us = max(1, period * 1_000_000 // tick_hz)
        else:
            raise ValueError("expected freq or period")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(mode, period_us, callback, self._stop),
                                        name="emulated-timer", daemon=True)
        with self._board._lock:
            self._board.timers.append(self)
        self._thread.start()

    def _run(self, mode: int, period_us: float, callback: Callable[[Any], None] | None, stop: threading.Event) -> None:
        board = self._board
        local = board._local
        k = 0  # ticks run so far
        start = board.now_us()
        while not stop.is_set():
            now = board.now_us()
            due = start + (k + 1) * period_us
            ripe = due + board.batch_s * 1e6  # let a batch accumulate: wake when the oldest due tick is batch_s old
            if ripe > now:
                stop.wait((ripe - now) / 1e6)
                continue
            count = int((now - due) // period_us) + 1
            if mode == Timer.ONE_SHOT:
                count = 1
            local.batch_times = start + (k + 1 + np.arange(count)) * period_us
            local.batch_id = next(_batch_ids)
            for i in range(count):
                if stop.is_set():
                    break
                local.virtual_us = float(local.batch_times[i])
                local.batch_i = i
                try:
                    if callback is not None:
                        callback(self)
                except Exception as e:  # MicroPython disables the IRQ and prints the exception
                    board.timer_errors += 1
                    print(f"emulated timer callback raised {type(e).__name__}: {e}", file=_sys.stderr)
                    stop.set()
                finally:
                    local.virtual_us = None
                k += 1
            if mode == Timer.ONE_SHOT:
                return

    def deinit(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2.0)
        self._thread = None


class ADC:
    """machine.ADC on an RP2040: channel 0..4, or a Pin 26..29. Samples inside a timer batch are computed together."""

    def __init__(self, board: Board, id: Any) -> None:
        ch = getattr(id, "id", id)
        if isinstance(ch, int) and 26 <= ch <= 29:
            ch -= 26
        if not isinstance(ch, int) or not 0 <= ch <= 4:
            raise ValueError(f"invalid ADC channel {id!r}")
        self._board = board
        self.channel = ch
        self._batch_id = -1
        self._cache = np.zeros(0, dtype=np.int64)

    def read_u16(self) -> int:
        b = self._board
        local = b._local
        if getattr(local, "virtual_us", None) is None:
            return int(b.frontend.read_u16(self.channel, b.wall_ns(np.array([b.now_us()])))[0])
        if self._batch_id != local.batch_id:  # first read in this timer batch: convert the whole batch at once
            self._batch_id = local.batch_id
            self._cache = b.frontend.read_u16(self.channel, b.wall_ns(local.batch_times))
        return int(self._cache[local.batch_i])


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, board: Board, id: Any, mode: int = -1, pull: int = -1, value: int | None = None) -> None:
        self._board = board
        self.id = id
        self._value = 0 if value is None else value
        self._pull = pull

    def value(self, v: int | None = None) -> int | None:
        if v is not None:
            self._value = int(bool(v))
            return None
        if self._pull == Pin.PULL_UP:
            return 0 if self._board.safe_mode else 1
        return self._value


class WDT:
    """machine.WDT: once started it cannot be stopped; expiry resets the board (the runner raises WatchdogReset)."""

    def __init__(self, board: Board, id: int = 0, timeout: int = 5000) -> None:
        if not 1 <= timeout <= 8388:
            raise ValueError("rp2 WDT timeout must be 1..8388 ms")
        self._board = board
        self._timeout_s = timeout / 1000.0
        self.feed()

    def feed(self) -> None:
        self._board.wdt_deadline = _time.monotonic() + self._timeout_s


class UART:
    """machine.UART over the same link (baud rate is meaningless on a pty)."""

    def __init__(self, board: Board, id: int, baudrate: int = 115200, **kwargs: Any) -> None:
        self._link = board.link
        self.baudrate = baudrate

    def any(self) -> int:
        return 1 if self._link.readable(0) else 0

    def read(self, n: int = -1) -> bytes | None:
        data = self._link.read(4096 if n < 0 else n)
        return data or None

    def write(self, data: bytes) -> int:
        return self._link.write(data)


class _BinaryIn:
    def __init__(self, board: Board) -> None:
        self._board = board

    def read(self, n: int = -1) -> bytes:
        # MicroPython blocks until n bytes; the firmware only reads after poll() said a byte is there
        out = b""
        want = 1 if n < 0 else n
        while len(out) < want:
            self._board.checkpoint()
            if not self._board.link.readable(0.01):
                continue
            out += self._board.link.read(want - len(out))
        return out


class _BinaryOut:
    def __init__(self, board: Board) -> None:
        self._board = board

    def write(self, data: bytes) -> int:
        self._board.checkpoint()
        self._board.link.write(data)
        return len(data)  # like MicroPython: the requested length, whatever was delivered


class _Stdin:
    def __init__(self, board: Board) -> None:
        self.buffer = _BinaryIn(board)
        self._board = board


class _Stdout:
    def __init__(self, board: Board) -> None:
        self.buffer = _BinaryOut(board)

    def write(self, s: str) -> int:
        return self.buffer.write(s.encode())


class _Poll:
    def __init__(self, board: Board) -> None:
        self._board = board
        self._objs: list[Any] = []

    def register(self, obj: Any, mask: int = 1) -> None:
        if obj not in self._objs:
            self._objs.append(obj)

    def unregister(self, obj: Any) -> None:
        if obj in self._objs:
            self._objs.remove(obj)

    def poll(self, timeout: int = -1) -> list[tuple[Any, int]]:
        self._board.checkpoint()
        t = None if timeout < 0 else timeout / 1000.0
        if self._objs and self._board.link.readable(0.05 if t is None else t):
            return [(self._objs[0], 1)]
        return []


def _make_modules(board: Board) -> dict[str, types.ModuleType]:
    def mod(name: str, **attrs: Any) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    def ticks_us() -> int:
        return int(board.now_us()) & TICKS_MAX

    def ticks_ms() -> int:
        return int(board.now_us() / 1000) & TICKS_MAX

    def ticks_diff(a: int, b: int) -> int:
        return ((a - b + TICKS_HALF) & TICKS_MAX) - TICKS_HALF

    def ticks_add(t: int, d: int) -> int:
        return (t + d) & TICKS_MAX

    def sleep_s(s: float) -> None:
        end = _time.monotonic() + s
        while True:
            board.checkpoint()
            left = end - _time.monotonic()
            if left <= 0:
                return
            _time.sleep(min(left, 0.01))

    timer_cls = type("Timer", (Timer,), {"__init__": lambda self, id=-1, **kw: Timer.__init__(self, board, id, **kw)})
    pin_cls = type("Pin", (Pin,), {"__init__": lambda self, id, mode=-1, pull=-1, value=None:
                                   Pin.__init__(self, board, id, mode, pull, value)})
    machine = mod(
        "machine",
        Timer=timer_cls,
        ADC=lambda id, **kw: ADC(board, id),
        Pin=pin_cls,
        WDT=lambda id=0, timeout=5000: WDT(board, id, timeout),
        UART=lambda id, baudrate=115200, **kw: UART(board, id, baudrate, **kw),
        unique_id=lambda: board.uid,
        reset_cause=lambda: board.reset_cause,
        reset=lambda: (_ for _ in ()).throw(Reset()),
        freq=lambda *a: 125_000_000,
        disable_irq=lambda: 0,
        enable_irq=lambda state=0: None,
        idle=lambda: sleep_s(0.0005),
        PWRON_RESET=PWRON_RESET, HARD_RESET=HARD_RESET, WDT_RESET=WDT_RESET, SOFT_RESET=SOFT_RESET,
    )
    time_mod = mod(
        "time",
        ticks_us=ticks_us, ticks_ms=ticks_ms, ticks_cpu=ticks_us, ticks_diff=ticks_diff, ticks_add=ticks_add,
        sleep=sleep_s, sleep_ms=lambda ms: sleep_s(ms / 1000.0), sleep_us=lambda us: sleep_s(us / 1e6),
        time=lambda: int(_time.time()), time_ns=_time.time_ns,
    )
    identity = lambda f: f  # noqa: E731
    micropython = mod(
        "micropython",
        kbd_intr=lambda c: None,
        alloc_emergency_exception_buf=lambda n: None,
        schedule=lambda f, arg: f(arg),
        const=identity, native=identity, viper=identity,
        mem_info=lambda *a: None,
    )
    sys_mod = mod(
        "sys",
        stdin=_Stdin(board), stdout=_Stdout(board), stderr=_sys.stderr,
        implementation=types.SimpleNamespace(name="micropython", version=(1, 24, 0), _machine="emulated RP2040"),
        platform="rp2", byteorder="little", maxsize=(1 << 31) - 1, version="3.4.0; MicroPython emulated",
        exit=_sys.exit, print_exception=lambda e, f=None: print(repr(e), file=_sys.stderr),
    )
    select_mod = mod("select", poll=lambda: _Poll(board), POLLIN=1, POLLOUT=4, POLLERR=8, POLLHUP=16)
    gc_mod = mod("gc", collect=lambda: None, enable=lambda: None, disable=lambda: None, mem_free=lambda: 180_000,
                 mem_alloc=lambda: 20_000, threshold=lambda *a: -1)
    mods = {"machine": machine, "time": time_mod, "utime": time_mod, "micropython": micropython, "sys": sys_mod,
            "usys": sys_mod, "select": select_mod, "uselect": select_mod, "gc": gc_mod}
    return mods


__all__ = ["AnalogFrontEnd", "Board", "Link", "Reset", "WatchdogReset", "PowerOff"]
