"""Core subcommands: `run`, `config check`, `version`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from agent import __version__
from agent.config import DEFAULT_CONFIG_PATH, Broker, Config, load, load_demo, resolve_state_dir
from agent.errors import ConfigError, OutboxError, StartError

log = logging.getLogger("edge_agent")


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")


def load_config(path: str | None, emulate: bool, *, quiet: bool = False) -> Config:
    """--config FILE, else /etc/edge-agent/agent.toml if present, else the built-in emulated demo."""
    if path:
        return load(path, emulate=emulate)
    if DEFAULT_CONFIG_PATH.exists():
        return load(DEFAULT_CONFIG_PATH, emulate=emulate)
    if not quiet and not emulate:
        log.info("no config file (%s not found): running the built-in emulated demo", DEFAULT_CONFIG_PATH)
    return load_demo(emulate=True)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE",
                   help=f"config file (default {DEFAULT_CONFIG_PATH}; without one, the built-in emulated demo)")
    p.add_argument("--emulate", action="store_true",
                   help="swap every bus for its emulated backend (no hardware needed)")


def cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        config = load_config(args.config, args.emulate)
        if args.broker:
            try:
                broker = Broker.parse(args.broker)
            except ValueError as e:
                raise ConfigError([f"--broker: {e}"]) from None
            config = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, broker=broker))
    except ConfigError as e:
        print(f"edge-agent: invalid configuration, not starting:\n{e}", file=sys.stderr)
        return 2
    state_dir = resolve_state_dir(args.state_dir, config)
    # the outbox holds plant data: nothing the agent creates is world-readable, under systemd (UMask=0027) or not
    os.umask(os.umask(0o027) | 0o027)
    if "\0" in str(state_dir):
        print(f"edge-agent: --state-dir: expected a path without NUL characters, got {str(state_dir)!r}",
              file=sys.stderr)
        return 2

    from agent.signal.cache import configure_cache  # before Numba is imported: where compiled kernels live
    try:
        configure_cache()
    except OSError as e:
        log.warning("Numba cache directory unusable (%s): kernels will be compiled at every start", e)
    if any(s.kind == "stream" for s in config.sensors):  # load the kernels while the rest starts up
        from agent.processing import KERNELS
        KERNELS.start()

    from agent.pipeline import Agent  # heavy imports (paho, pymodbus) only now

    config_path = args.config or (str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else None)
    if config.source == "<built-in demo>" and getattr(args, "scenario", None) is None:
        # the newcomer's first minute: a believable shift (a healthy machine cycling, then faults), not a machine
        # frozen at one operating point; `--scenario none` runs the plant at constant speed
        args.scenario = "demo"
        log.info("built-in demo: playing the 'demo' scenario (a shift with faults; --scenario none to turn it off)")
    if getattr(args, "scenario", None) == "none":
        args.scenario = None
    try:
        clock, plant, scenario = _emulation(args, config)
    except ConfigError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 2
    try:
        agent = Agent(config, state_dir, config_path=config_path, clock=clock, plant=plant)
    except ConfigError as e:
        print(f"edge-agent: invalid configuration, not starting:\n{e}", file=sys.stderr)
        return 2
    except Exception as e:  # a driver rejecting its options, a device that cannot be opened
        _cannot_start(args, e, f"cannot start (state dir {state_dir})" if not isinstance(e, StartError)
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
        agent.start()
    except OutboxError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a thread that cannot start, a socket that cannot be made
        _cannot_start(args, e, "cannot start the pipeline")
        try:
            agent.stop(drain_s=0)
        except Exception:
            pass
        return 1
    service = Service(agent, status_socket=Path(args.status_socket) if args.status_socket
                      else default_status_socket(state_dir))
    runner = view = None
    try:
        if scenario is not None:
            from hal.emulated.scenario import ScenarioRunner
            runner = ScenarioRunner(scenario, plant, lambda: agent.context).start()
        if sys.stdout.isatty():  # the live view in a terminal; plain log lines otherwise (systemd, pipes)
            from agent.console import LiveView
            view = LiveView(agent, runner=runner).start()
        service.ready()  # READY=1 (systemd), the status socket, the first health record
        while not stop.wait(1.0):
            if hup.is_set():  # SIGHUP: reload; a bad configuration is rejected and the running one kept
                hup.clear()
                service.reloading()
                try:
                    ok, message = agent.reload()
                except Exception as e:  # a bug in reloading must not end the main loop
                    log.exception("reload failed")
                    ok, message = False, f"{type(e).__name__}: {e}"
                service.reloaded(ok, message)
            service.tick()  # WATCHDOG=1 only while every stage makes progress; STATUS=; health records
            if args.duration and _elapsed_s(agent.boot_ns) >= args.duration:
                break
    finally:
        if runner is not None:
            runner.stop()
        if view is not None:
            view.stop()
        service.stopping()  # STOPPING=1
        agent.stop(drain_s=args.drain_s)
    return 0


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    """--debug or EDGE_AGENT_DEBUG=1: print tracebacks of unexpected errors."""
    return bool(getattr(args, "debug", False)) or os.environ.get("EDGE_AGENT_DEBUG", "") not in ("", "0")


def _cannot_start(args: argparse.Namespace, e: BaseException, what: str) -> None:
    """One line naming what failed and where; the traceback only with --debug / EDGE_AGENT_DEBUG=1."""
    text = str(e) if isinstance(e, StartError) else f"{type(e).__name__}: {e}"
    filename = getattr(e, "filename", None)
    if filename and str(filename) not in text:
        text += f" ({filename})"
    print(f"edge-agent: {what}: {text}", file=sys.stderr)
    if debug_enabled(args):
        import traceback
        traceback.print_exception(e, file=sys.stderr)
    else:
        print("edge-agent: run with --debug (or EDGE_AGENT_DEBUG=1) for the traceback", file=sys.stderr)


def _emulation(args: argparse.Namespace, config: Config) -> tuple[object, object, object]:
    """(clock, plant, scenario) for --speed and --scenario; (None, None, None) without them."""
    speed = float(getattr(args, "speed", 1.0) or 1.0)
    name = getattr(args, "scenario", None)
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


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        if args.file:
            config = load(args.file, emulate=args.emulate)
        elif DEFAULT_CONFIG_PATH.exists():
            config = load(DEFAULT_CONFIG_PATH, emulate=args.emulate)
        else:
            config = load_demo()
    except ConfigError as e:
        print(f"invalid configuration ({len(e.problems)} problem{'s' if len(e.problems) != 1 else ''}):",
              file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    print("configuration OK")
    for line in config.summary():
        print(f"  {line}")
    print(f"  state dir: {resolve_state_dir(None, config)}")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    import platform
    print(f"edge-agent {__version__} (Python {platform.python_version()}, {platform.machine()})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the agent (the built-in emulated demo if there is no config)",
                         description="Run the agent: read sensors, compute features, store every record in the "
                                     "outbox and forward it over MQTT. Stops cleanly on SIGINT/SIGTERM.")
    add_config_args(run)
    run.add_argument("--broker", metavar="URL", help="broker URL, overriding the config (mqtt://HOST:PORT)")
    run.add_argument("--state-dir", metavar="DIR",
                     help="where the outbox lives (default: the config's agent.state_dir, else $STATE_DIRECTORY, "
                          "else ${XDG_STATE_HOME:-~/.local/state}/edge-agent)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--debug", action="store_true",
                     help="print the traceback of an unexpected error (also: EDGE_AGENT_DEBUG=1)")
    run.add_argument("--duration", type=float, default=0.0, metavar="S", help="stop after S seconds (0: run forever)")
    run.add_argument("--status-socket", metavar="PATH",
                     help="UNIX socket `edge-agent status` reads (default: $RUNTIME_DIRECTORY/status.sock, else "
                          "<state dir>/status.sock)")
    run.add_argument("--drain-s", type=float, default=3.0, metavar="S",
                     help="at shutdown, keep publishing the outbox for up to S seconds (default 3; cut to what "
                          "the 40 s stop budget leaves, see docs/operations.md)")
    run.add_argument("--scenario", metavar="NAME|FILE",
                     help="emulation: play a scenario on the plant (the built-in demo plays 'demo'; none: no "
                          "scenario; shipped: bearing-wear, demo, faults, shift; "
                          "or a .toml file; see docs/plant.md)")
    run.add_argument("--speed", type=float, default=1.0, metavar="X",
                     help="emulation: run plant time X times faster than real time (records carry plant time)")
    run.set_defaults(func=cmd_run)

    config = sub.add_parser("config", help="check a configuration file")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION")
    check = csub.add_parser("check", help="validate a config file and print a summary (exit 2 if invalid)")
    check.add_argument("file", nargs="?", metavar="FILE", help=f"config file (default {DEFAULT_CONFIG_PATH})")
    check.add_argument("--emulate", action="store_true", help="check it as `run --emulate` would use it")
    check.set_defaults(func=cmd_config_check)
    config.set_defaults(func=lambda a: (config.print_help(), 2)[1])

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
