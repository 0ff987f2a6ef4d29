"""The `edge-agent` command line (console script `agent.cli:main`; `python -m agent` too).

Subcommands live in one module per verb group, listed in `COMMAND_MODULES`; what they share (errors, arguments,
configuration and state directory) is `agent.cli.common`, and they never import each other. Each has
`register(subparsers)` that adds its parsers with `set_defaults(func=handler)`, where `handler(args) -> int`
returns the exit code. Heavy imports (numba, paho, pymodbus) happen inside handlers, so `--help` is instant. The
running agent itself is `agent.app`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from agent import __version__

# One line per module; each module owns its subcommands.
COMMAND_MODULES = [
    "agent.cli.run",  # run, config check, version
    "agent.cli.hal",  # scan i2c|modbus, read
    "agent.cli.doctor",
    "agent.cli.status",
    "agent.cli.capture",  # capture (plot: its PNG renderer)
    "agent.cli.buffer",  # buffer stats|export|purge, tail
    "agent.cli.install",  # install, uninstall
    "agent.cli.sensornode",
    "agent.cli.signal",  # analyze, warmup
    "agent.fleet.cli",  # ingest, fleet (the fleet side, docs/fleet.md)
]

# Verbs whose module is known without importing the others: `edge-agent run` registers only its own module, so
# the agent's start-up does not pay for importing every other verb's module (0.15 s here; its first sample waits).
FAST_COMMANDS = {"run": "agent.cli.run"}

EPILOG = """\
examples:
  edge-agent run --emulate                      run the built-in emulated demo against mqtt://localhost:1883
  edge-agent run --config /etc/edge-agent/agent.toml
  edge-agent config check examples/agent.toml   validate a config and print a summary

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with a `command` of FAST_COMMANDS, only the module that has it."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Industrial edge agent: reads sensors (GPIO, I2C, serial, Modbus), computes condition-monitoring "
                    "features at the edge, stores every record in a durable SQLite outbox and forwards it over MQTT.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [FAST_COMMANDS[command]] if command in FAST_COMMANDS else COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(words[0] if words else None)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edge-agent ... | head`: the reader went away; not an error worth a traceback
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
