"""What every `edge-agent` verb shares: the error a command raises, the shared arguments, loading the
configuration, resolving the state directory (written once, here), finding the running service, opening the outbox
read-only, and the small formatting helpers.

Each verb group is a module of this package with `register(subparsers)`; they import from here and never from each
other. Must not: issue SQL on the outbox (agent.outbox.OutboxView does), write to the outbox, start the pipeline
(agent.app does).

Exit codes: 0 ok, 1 a check failed or a runtime error, 2 usage or configuration error, 3 (`status`) the service is
not running (the outbox was read instead).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import DEFAULT_CONFIG_PATH, Config, load, load_demo
from agent.errors import ConfigError

log = logging.getLogger("edge_agent")

SYSTEM_STATE_DIR = Path("/var/lib/edge-agent")


class CliError(Exception):
    """A command cannot run; the message says why and what to do. Exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")


# -- configuration and state directory ------------------------------------------------------------------------------

def load_config(path: str | None, emulate: bool, *, quiet: bool = False) -> Config:
    """--config FILE, else /etc/edge-agent/agent.toml if present, else the built-in emulated demo."""
    if path:
        return load(path, emulate=emulate)
    if DEFAULT_CONFIG_PATH.exists():
        return load(DEFAULT_CONFIG_PATH, emulate=emulate)
    if not quiet and not emulate:
        log.info("no config file (%s not found): running the built-in emulated demo", DEFAULT_CONFIG_PATH)
    return load_demo(emulate=True)


def config_for(args: argparse.Namespace, *, required: bool = False) -> Config | None:
    """The configuration the service uses (--config, else /etc/edge-agent/agent.toml, else the built-in demo);
    None when it is invalid, unless `required` (then a CliError listing the problems, exit code 2)."""
    try:
        return load_config(getattr(args, "config", None), getattr(args, "emulate", False), quiet=True)
    except ConfigError as e:
        if required:
            raise CliError("invalid configuration:\n  " + "\n  ".join(e.problems), 2) from None
        return None


def resolve_state_dir(cli_value: str | None, config: Config | None, *, system_outbox: bool = False) -> Path:
    """--state-dir, else the config's agent.state_dir, else $STATE_DIRECTORY (systemd), else (`system_outbox`: the
    diagnostics looking for the service) /var/lib/edge-agent when it holds an outbox, else
    ${XDG_STATE_HOME:-~/.local/state}/edge-agent."""
    if cli_value:
        return Path(cli_value).expanduser()
    if config is not None and config.agent.state_dir is not None:
        return config.agent.state_dir
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if system_outbox:
        from agent.outbox import DB_NAME
        if (SYSTEM_STATE_DIR / DB_NAME).exists():
            return SYSTEM_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "edge-agent"


def state_dir_for(args: argparse.Namespace, config: Config | None) -> Path:
    """The state directory a diagnostic reads: as the service resolves it, plus the system service's
    /var/lib/edge-agent when it holds an outbox."""
    return resolve_state_dir(getattr(args, "state_dir", None), config, system_outbox=True)


# -- the running service and the outbox -----------------------------------------------------------------------------

def find_service(args: argparse.Namespace, state_dir: Path | None) -> tuple[Path | None, dict[str, Any] | None]:
    """The status socket of a running agent and its document, or (None, None)."""
    from agent.service import read_status, status_socket_candidates
    candidates = [Path(args.socket)] if getattr(args, "socket", None) else status_socket_candidates(state_dir)
    for path in candidates:
        try:
            return path, read_status(path)
        except FileNotFoundError:
            continue
        except PermissionError:
            raise CliError(f"{path}: permission denied; run as the service user, root, or a member of the "
                           f"edge-agent group (sudo usermod -aG edge-agent $USER, then log in again)") from None
        except (OSError, ValueError):
            continue  # a stale socket of an agent that was killed
    return None, None


def service_running(args: argparse.Namespace, state_dir: Path) -> bool:
    _, doc = find_service(args, state_dir)
    return doc is not None


def open_outbox(state_dir: Path) -> Any:
    """The outbox of `state_dir` as a read-only `agent.outbox.OutboxView` (WAL readers do not block the writer);
    a CliError saying why when it cannot be read."""
    from agent.outbox import OutboxUnreadable, OutboxView
    try:
        return OutboxView.open(state_dir)
    except OutboxUnreadable as e:
        raise CliError(str(e)) from None


# -- arguments and error handling -----------------------------------------------------------------------------------

def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE",
                   help=f"config file (default {DEFAULT_CONFIG_PATH}; without one, the built-in emulated demo)")
    p.add_argument("--emulate", action="store_true",
                   help="swap every bus for its emulated backend (no hardware needed)")


def add_diag_args(p: argparse.ArgumentParser, socket: bool = False) -> None:
    """--config, --emulate, --state-dir and (`socket`) --socket: what a diagnostic needs to find the agent."""
    add_config_args(p)
    p.add_argument("--state-dir", metavar="DIR",
                   help="the agent's state directory (default: as the service: the config's agent.state_dir, "
                        "$STATE_DIRECTORY, /var/lib/edge-agent, ~/.local/state/edge-agent)")
    if socket:
        p.add_argument("--socket", metavar="PATH",
                       help="the running agent's status socket (default: $RUNTIME_DIRECTORY/status.sock, "
                            "/run/edge-agent/status.sock, <state dir>/status.sock)")


def with_errors(func: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """A handler that turns a CliError into its message on stderr and its exit code."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except CliError as e:
            print(f"edge-agent {args.command}: {e}", file=sys.stderr)
            return e.code
        except BrokenPipeError:  # `edge-agent doctor | head`: the reader left, nothing is wrong
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    return run


# -- formatting -----------------------------------------------------------------------------------------------------

def iso(ts_ns: int | None) -> str | None:
    from agent.records import iso_ts
    return iso_ts(ts_ns) if ts_ns is not None else None


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = abs(seconds)
    if s < 60:
        return f"{seconds:.0f} s"
    if s < 3600:
        return f"{seconds / 60:.0f} min"
    if s < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1000  # type: ignore[assignment]
    return str(n)
