"""Core subcommands: `run`, `config check`, `version`.

`run` turns its options into a loaded configuration, a state directory and `agent.app.RunOptions`, then hands over
to `agent.app.run` (the composition root and main loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from agent import __version__
from agent.cli.common import add_config_args, load_config, resolve_state_dir, setup_logging
from agent.config import DEFAULT_CONFIG_PATH, Broker, load, load_demo
from agent.errors import ConfigError

log = logging.getLogger("edge_agent")


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
    if "\0" in str(state_dir):
        print(f"edge-agent: --state-dir: expected a path without NUL characters, got {str(state_dir)!r}",
              file=sys.stderr)
        return 2
    config_path = args.config or (str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else None)
    scenario = getattr(args, "scenario", None)
    if config.source == "<built-in demo>" and scenario is None:
        # the newcomer's first minute: a believable shift (a healthy machine cycling, then faults), not a machine
        # frozen at one operating point; `--scenario none` runs the plant at constant speed
        scenario = "demo"
        log.info("built-in demo: playing the 'demo' scenario (a shift with faults; --scenario none to turn it off)")
    if scenario == "none":
        scenario = None
    from agent.app import RunOptions, run
    return run(config, state_dir, RunOptions(
        config_path=config_path, scenario=scenario, speed=float(getattr(args, "speed", 1.0) or 1.0),
        duration_s=args.duration, drain_s=args.drain_s,
        status_socket=Path(args.status_socket) if args.status_socket else None, debug=args.debug))


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
