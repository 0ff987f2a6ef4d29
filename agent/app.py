"""The application: the composition root of a running agent.

`run(config, state_dir, options)` builds the pipeline (`agent.pipeline.Pipeline`), the systemd service around it
(`agent.service.Service`), the emulated plant and scenario for --speed/--scenario, and the live view in a terminal;
then runs the main loop (SIGINT/SIGTERM stop, SIGHUP reloads, a watchdog tick a second) and stops everything in
reverse order. Sinks start before sources; the pipeline drains on the way out.

Owns: process-level start-up and shutdown order, signal handling, emulation set-up. Must not: parse command lines
or find configuration files (`agent.cli.run` passes a loaded Config and the resolved state directory), issue SQL,
publish.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.config import Config
from agent.errors import ConfigError, OutboxError, StartError

log = logging.getLogger("edge_agent")


@dataclass
class RunOptions:
    """How to run: what `edge-agent run`'s options say beyond the configuration."""

    config_path: str | None = None  # the file the configuration came from (reloaded on SIGHUP); None: built in
    scenario: str | None = None  # emulation: a scenario name or .toml file to play on the plant
    speed: float = 1.0  # emulation: plant time runs this many times faster than real time
    duration_s: float = 0.0  # stop after this long (0: run until a signal)
    drain_s: float = 3.0  # at shutdown, keep publishing the outbox for up to this long
    status_socket: Path | None = None  # default: agent.service.default_status_socket(state_dir)
    live_view: bool | None = None  # the terminal live view; None: when standard output is a terminal
    debug: bool = False  # print the traceback of an unexpected error (also: EDGE_AGENT_DEBUG=1)


def run(config: Config, state_dir: Path, options: RunOptions) -> int:
    """Run the agent until a signal or `options.duration_s`; the exit code (0 ok, 1 runtime failure, 2 a
    configuration the pipeline refuses). Call from the main thread (it installs signal handlers)."""
    # the outbox holds plant data: nothing the agent creates is world-readable, under systemd (UMask=0027) or not
    os.umask(os.umask(0o027) | 0o027)
    from agent.signal.cache import configure_cache  # before Numba is imported: where compiled kernels live
    try:
        configure_cache()
    except OSError as e:
        log.warning("Numba cache directory unusable (%s): kernels will be compiled at every start", e)
    if any(s.kind == "stream" for s in config.sensors):  # load the kernels while the rest starts up
        from agent.processing import KERNELS
        KERNELS.start()

    from agent.pipeline import Pipeline  # heavy imports (paho, pymodbus) only now

    try:
        clock, plant, scenario = emulation(config, options.speed, options.scenario)
    except ConfigError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 2
    try:
        pipeline = Pipeline(config, state_dir, config_path=options.config_path, clock=clock, plant=plant,
                            acquire_early=True)  # stream sensors are read from here on: their first window
    except ConfigError as e:
        print(f"edge-agent: invalid configuration, not starting:\n{e}", file=sys.stderr)
        return 2
    except Exception as e:  # a driver rejecting its options, a device that cannot be opened
        cannot_start(options.debug, e, f"cannot start (state dir {state_dir})" if not isinstance(e, StartError)
                     else "cannot start")
        return 2
    stop = threading.Event()
    hup = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        (hup if signum == signal.SIGHUP else stop).set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    from agent.service import Service, default_status_socket

    try:
        pipeline.start()
    except OutboxError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a thread that cannot start, a socket that cannot be made
        cannot_start(options.debug, e, "cannot start the pipeline")
        try:
            pipeline.stop(drain_s=0)
        except Exception:
            pass
        return 1
    service = Service(pipeline, status_socket=options.status_socket if options.status_socket is not None
                      else default_status_socket(state_dir))
    runner = view = None
    try:
        if scenario is not None:
            from hal.emulated.scenario import ScenarioRunner
            runner = ScenarioRunner(scenario, plant, lambda: pipeline.context).start()
        live_view = sys.stdout.isatty() if options.live_view is None else options.live_view
        if live_view:  # the live view in a terminal; plain log lines otherwise (systemd, pipes)
            from agent.console import LiveView
            view = LiveView(pipeline, runner=runner).start()
        service.ready()  # READY=1 (systemd), the status socket, the first health record
        while not stop.wait(1.0):
            if hup.is_set():  # SIGHUP: reload; a bad configuration is rejected and the running one kept
                hup.clear()
                service.reloading()
                try:
                    ok, message = pipeline.reload()
                except Exception as e:  # a bug in reloading must not end the main loop
                    log.exception("reload failed")
                    ok, message = False, f"{type(e).__name__}: {e}"
                service.reloaded(ok, message)
            service.tick()  # WATCHDOG=1 only while every stage makes progress; STATUS=; health records
            if options.duration_s and _elapsed_s(pipeline.boot_ns) >= options.duration_s:
                break
    finally:
        if runner is not None:
            runner.stop()
        if view is not None:
            view.stop()
        service.stopping()  # STOPPING=1
        pipeline.stop(drain_s=options.drain_s)
    return 0


def debug_enabled(flag: bool = False) -> bool:
    """--debug or EDGE_AGENT_DEBUG=1: print tracebacks of unexpected errors."""
    return flag or os.environ.get("EDGE_AGENT_DEBUG", "") not in ("", "0")


def cannot_start(debug: bool, e: BaseException, what: str) -> None:
    """One line naming what failed and where; the traceback only with --debug / EDGE_AGENT_DEBUG=1."""
    text = str(e) if isinstance(e, StartError) else f"{type(e).__name__}: {e}"
    filename = getattr(e, "filename", None)
    if filename and str(filename) not in text:
        text += f" ({filename})"
    print(f"edge-agent: {what}: {text}", file=sys.stderr)
    if debug_enabled(debug):
        import traceback
        traceback.print_exception(e, file=sys.stderr)
    else:
        print("edge-agent: run with --debug (or EDGE_AGENT_DEBUG=1) for the traceback", file=sys.stderr)


def emulation(config: Config, speed: float, name: str | None) -> tuple[object, object, object]:
    """(clock, plant, scenario) for --speed and --scenario; (None, None, None) without them. Raises ConfigError
    when they cannot apply (a real bus, a bad factor, an unknown scenario)."""
    speed = float(speed or 1.0)
    if speed == 1.0 and not name:
        return None, None, None
    if not speed > 0:
        raise ConfigError([f"--speed: expected a positive factor, got {speed:g}"])
    real = [b for b, t in config.buses.items() if t.get("backend", "real") != "emulated"]
    if not config.emulate and real:
        raise ConfigError([f"--speed/--scenario drive the emulated plant, but bus {', '.join(real)} is real "
                           "(add --emulate)"])
    from hal.clock import clock_for
    from hal.emulated.plant import Plant
    from hal.emulated.scenario import ScenarioError, load

    scenario = None
    if name:
        try:
            scenario = load(name)
        except ScenarioError as e:
            raise ConfigError([str(e)]) from None
    clock = clock_for(speed)
    if speed != 1.0:
        log.info("emulating at %gx real time: timestamps are plant time", speed)
    plant = Plant(clock=clock)
    if scenario is not None:  # plant parameters and the initial schedule apply before the sensors start
        for k, v in scenario.plant.items():
            setattr(plant, k, v)
        plant.schedule(scenario.start, scenario.duty)
    return clock, plant, scenario


def _elapsed_s(boot_ns: int) -> float:
    from hal.types import now_ns
    return (now_ns() - boot_ns) / 1e9
