"""`edge-agent install` and `edge-agent uninstall`: run systemd/install.sh or uninstall.sh of the clone this package
runs from (an editable install). Must not: do any of the installing itself (the scripts own it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.common import CliError, with_errors


def _script(name: str) -> Path:
    """systemd/<name> of the source tree this package runs from (a clone, installed editable)."""
    here = Path(__file__).resolve().parents[2]
    script = here / "systemd" / name
    if not script.is_file():
        raise CliError(f"{name} not found next to this installation ({script}): edge-agent was installed from a "
                        f"package, not a clone; run systemd/{name} from a clone of the repository instead")
    return script


def cmd_install(args: argparse.Namespace) -> int:
    import subprocess
    script = _script("install.sh")
    argv = ["bash", str(script), "--source", str(script.parent.parent)]
    if args.root:
        argv += ["--root", args.root]
    if args.admin:
        argv += ["--admin", args.admin]
    if args.no_start:
        argv.append("--no-start")
    if args.skip_venv:
        argv.append("--skip-venv")
    return subprocess.run(argv).returncode


def cmd_uninstall(args: argparse.Namespace) -> int:
    import subprocess
    argv = ["bash", str(_script("uninstall.sh"))]
    if args.root:
        argv += ["--root", args.root]
    if args.purge:
        argv.append("--purge")
    if args.yes:
        argv.append("--yes")
    return subprocess.run(argv).returncode


def register(sub: argparse._SubParsersAction) -> None:
    ins = sub.add_parser("install", help="install as a systemd service (sudo; runs systemd/install.sh)",
                         description="One step: the edge-agent user, a venv under /opt/edge-agent, the directories, "
                                     "a starter config, a warm Numba cache, the unit enabled and started. "
                                     "Idempotent; keeps an existing config and the outbox.")
    ins.add_argument("--no-start", action="store_true", help="do not enable or start the service")
    ins.add_argument("--admin", metavar="USER", help="add USER to the edge-agent group (default: $SUDO_USER)")
    ins.add_argument("--root", metavar="DIR", help="stage into DIR instead of / (privileged steps only printed)")
    ins.add_argument("--skip-venv", action="store_true", help="files only: no venv, no warm-up")
    ins.set_defaults(func=with_errors(cmd_install))
    un = sub.add_parser("uninstall", help="remove the service; keeps config and outbox unless --purge",
                        description="Stops and disables the service, removes the unit and /opt/edge-agent. Keeps "
                                    "/etc/edge-agent, the outbox in /var/lib/edge-agent, the cache and the user "
                                    "unless --purge.")
    un.add_argument("--purge", action="store_true", help="also delete config, outbox (unsent records!), cache, user")
    un.add_argument("--yes", "-y", action="store_true", help="do not ask before --purge")
    un.add_argument("--root", metavar="DIR", help="act on a staged root instead of /")
    un.set_defaults(func=with_errors(cmd_uninstall))
