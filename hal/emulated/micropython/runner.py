"""Runs the unchanged sensor-node firmware (firmware/*.py) on CPython, on one end of a pty pair.

`EmulatedNode` is one board: `plug()` powers it (a pty pair appears, its slave reachable through a symlink
`<link_dir>/<prefix><n>` that plays the /dev/ttyACM<n> of a real board), the firmware boots from `main.py` with the
shim modules of `hal.emulated.micropython.shim`, and its ADC reads the emulated plant. `unplug()` powers it off and
the symlink disappears; the next `plug()` enumerates under a new name, as USB re-enumeration does.

The firmware runs in threads of this process (a main-loop thread and a timer thread), each boot with a private
module table built from the source files, so two nodes never share state and a reboot starts from scratch. Imports
are limited to the shim modules, the firmware's own files and a few modules MicroPython also has: a firmware import
CPython has but the board does not fails here too.

Watchdog: `machine.WDT` expiry reboots the firmware (reset cause WDT_RESET). It is delivered at the main loop's next
shim call; a loop that makes no shim call at all is interrupted with an asynchronous exception two seconds later.

Standalone: `python -m hal.emulated.micropython.runner --link-dir /tmp/nodes` serves one node until Ctrl-C.
"""

from __future__ import annotations

import argparse
import builtins
import ctypes
import fcntl
import hashlib
import importlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import tty
import types
from pathlib import Path
from typing import Any

from hal.emulated.micropython.shim import AnalogFrontEnd, Board, Link, PowerOff, Reset, WatchdogReset

log = logging.getLogger(__name__)

FIRMWARE_DIR = Path(__file__).resolve().parents[3] / "firmware"
_MICROPYTHON_STDLIB = {"array", "struct", "binascii", "math", "errno", "collections", "json"}
_code_cache: dict[tuple[str, int], types.CodeType] = {}


INSTALLED_FIRMWARE_DIR = Path(sys.prefix) / "share" / "edge-agent" / "firmware"  # pyproject's data-files


def firmware_dir() -> Path:
    """$EDGE_AGENT_FIRMWARE_DIR, else the repository's firmware/ directory (a checkout or an editable install),
    else the copy a regular install puts under <venv>/share/edge-agent/firmware."""
    env = os.environ.get("EDGE_AGENT_FIRMWARE_DIR")
    if env:
        return Path(env)
    if (FIRMWARE_DIR / "main.py").exists() or not (INSTALLED_FIRMWARE_DIR / "main.py").exists():
        return FIRMWARE_DIR
    return INSTALLED_FIRMWARE_DIR


class FirmwareImage:
    """The firmware's source files loaded into a private module table for one boot."""

    def __init__(self, directory: Path, shims: dict[str, types.ModuleType]) -> None:
        self.dir = Path(directory)
        self.shims = shims
        self.modules: dict[str, types.ModuleType] = {}
        self.builtins = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import

    def _import(self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level:
            raise ImportError("the firmware uses absolute imports only")
        if name in self.modules:
            return self.modules[name]
        if name in self.shims:
            return self.shims[name]
        if "." not in name and (self.dir / f"{name}.py").is_file():
            return self.load(name)
        if name in _MICROPYTHON_STDLIB:
            return importlib.import_module(name)
        raise ImportError(f"no module named {name!r} on the emulated RP2040 (shims: {', '.join(sorted(self.shims))}; "
                          f"stdlib: {', '.join(sorted(_MICROPYTHON_STDLIB))})")

    def load(self, name: str) -> types.ModuleType:
        path = self.dir / f"{name}.py"
        key = (str(path), path.stat().st_mtime_ns)
        code = _code_cache.get(key)
        if code is None:
            code = _code_cache[key] = compile(path.read_bytes(), str(path), "exec")
        module = types.ModuleType(name)
        module.__file__ = str(path)
        module.__dict__["__builtins__"] = self.builtins
        self.modules[name] = module
        exec(code, module.__dict__)
        return module


def board_uid(board_id: str | bytes | None, name: str) -> bytes:
    """The emulated machine.unique_id(): 8 bytes from a hex board id, else derived from `name`."""
    if isinstance(board_id, bytes):
        return board_id
    if board_id:
        try:
            return bytes.fromhex(board_id)
        except ValueError:
            pass
    return hashlib.sha256(name.encode()).digest()[:8]


class EmulatedNode:
    """One emulated sensor node on a pty pair, running the firmware source. See the module docstring."""

    def __init__(self, plant: Any, board_id: str | bytes | None = None, link_dir: str | Path | None = None,
                 prefix: str = "ttyNODE", firmware: str | Path | None = None, mv_per_unit: float = 10.0,
                 zero_v: float = 1.65, vref: float = 3.3, batch_s: float = 0.005, name: str = "node") -> None:
        self.frontend = AnalogFrontEnd(plant, mv_per_unit, zero_v, vref)
        self.uid = board_uid(board_id, name)
        self._own_dir = link_dir is None
        self.link_dir = Path(link_dir) if link_dir is not None else Path(tempfile.mkdtemp(prefix="edge-sensornode-"))
        self.link_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.firmware = Path(firmware) if firmware is not None else firmware_dir()
        self.batch_s = batch_s
        self.board: Board | None = None
        self.port: str | None = None  # the symlink while plugged in
        self.plugs = 0
        self.boots = 0
        self.watchdog_resets = 0
        self.crashes = 0
        self._cpu: threading.Thread | None = None
        self._stop_watch = threading.Event()
        self._fds: tuple[int, int] | None = None
        self._lock = threading.Lock()

    @property
    def board_id(self) -> str:
        return self.uid.hex()

    @property
    def link(self) -> Link | None:
        return self.board.link if self.board is not None else None

    # ---- power -------------------------------------------------------------------------------------------------

    def plug(self) -> str:
        """Power the board: a new pty pair, a new symlink name, a cold boot. Returns the port path."""
        with self._lock:
            if self.board is not None:
                return self.port or ""
            self.link_dir.mkdir(parents=True, exist_ok=True)
            master, slave = os.openpty()
            tty.setraw(slave)
            fcntl.fcntl(master, fcntl.F_SETFL, fcntl.fcntl(master, fcntl.F_GETFL) | os.O_NONBLOCK)
            self._fds = (master, slave)
            port = self.link_dir / f"{self.prefix}{self.plugs}"
            self.plugs += 1
            if port.is_symlink() or port.exists():
                port.unlink()
            port.symlink_to(os.ttyname(slave))
            self.port = str(port)
            board = Board(self.frontend, self.uid, Link(master), self.batch_s)
            self.board = board
            self._stop_watch = threading.Event()
            self._cpu = threading.Thread(target=self._run_cpu, args=(board,), name=f"node-{self.board_id}",
                                         daemon=True)
            self._cpu.start()
            threading.Thread(target=self._watchdog, args=(board, self._cpu, self._stop_watch),
                             name=f"node-{self.board_id}-wdt", daemon=True).start()
            return self.port

    def unplug(self) -> None:
        """Power off: the firmware stops, the pty pair closes, the port symlink disappears."""
        with self._lock:
            board, cpu, fds = self.board, self._cpu, self._fds
            if board is None:
                return
            self.board = None
            self._stop_watch.set()
            board.pending = PowerOff
            board.hung = False
            if cpu is not None:
                cpu.join(timeout=5.0)
                if cpu.is_alive():
                    _raise_in(cpu, PowerOff)
                    cpu.join(timeout=5.0)
            board.stop_timers()
            board.link.close()
            if self.port:
                try:
                    os.unlink(self.port)
                except FileNotFoundError:
                    pass
            self.port = None
            if fds:
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._fds = None

    def hang(self) -> None:
        """Make the firmware's main loop hang (as on a stuck peripheral): only the watchdog recovers it."""
        if self.board is not None:
            self.board.hung = True

    def close(self) -> None:
        self.unplug()
        if self._own_dir:
            shutil.rmtree(self.link_dir, ignore_errors=True)

    def __enter__(self) -> "EmulatedNode":
        self.plug()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the firmware's threads ---------------------------------------------------------------------------------

    def _run_cpu(self, board: Board) -> None:
        reset: Reset | None = None
        while True:
            try:
                if reset is not None:  # inside the try: a late reset during the clean-up is caught too
                    board.stop_timers()
                    board.hung = False
                    board.wdt_deadline = None
                    board.reset_cause = reset.cause
                    if isinstance(reset, WatchdogReset):
                        self.watchdog_resets += 1
                    reset = None
                self.boots += 1
                try:
                    FirmwareImage(self.firmware, board.modules()).load("main")
                    log.info("node %s: main.py returned; idling as the REPL would", self.board_id)
                    _idle(board)
                except (Reset, PowerOff):
                    raise
                except Exception:
                    self.crashes += 1
                    log.error("node %s: firmware crashed:\n%s", self.board_id, traceback.format_exc())
                    _idle(board)  # the REPL; only the watchdog (if started) brings it back
            except PowerOff:
                board.stop_timers()
                return
            except Reset as r:
                reset = r

    def _watchdog(self, board: Board, cpu: threading.Thread, stop: threading.Event) -> None:
        while not stop.wait(0.02):
            deadline = board.wdt_deadline
            if deadline is None or time.monotonic() <= deadline:
                continue
            board.wdt_deadline = None
            board.stop_timers()
            board.pending = WatchdogReset
            # a loop that makes no shim call never takes `pending`: interrupt it after two seconds
            if stop.wait(2.0):
                return
            with board._lock:
                untaken = board.pending is WatchdogReset
                if untaken:
                    board.pending = None
            if untaken and cpu.is_alive():
                _raise_in(cpu, WatchdogReset)


def _idle(board: Board) -> None:
    while True:
        board.checkpoint()
        time.sleep(0.01)


def _raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


def main(argv: list[str] | None = None) -> int:
    from hal.emulated.plant import Plant

    p = argparse.ArgumentParser(prog="python -m hal.emulated.micropython.runner",
                                description="Serve one emulated sensor node (the firmware source) on a pty.")
    p.add_argument("--link-dir", default=None, help="directory for the port symlink (default: a new temp dir)")
    p.add_argument("--board-id", default=None, help="hex board id (machine.unique_id), default derived from --name")
    p.add_argument("--name", default="node")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    node = EmulatedNode(Plant(), args.board_id, args.link_dir, name=args.name)
    port = node.plug()
    print(f"sensor node {node.board_id} on {port} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
