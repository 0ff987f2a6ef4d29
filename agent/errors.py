"""Errors of the agent: one root, families beneath it; each leaf also inherits the builtin it resembles."""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error raised by `agent`."""


class ConfigError(AgentError, ValueError):
    """The configuration is invalid. `problems` lists every problem as `file: key.path: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class OutboxError(AgentError, OSError):
    """The outbox cannot be opened or written (disk full, read-only file system, corrupt database)."""


class UplinkError(AgentError, ConnectionError):
    """The broker cannot be reached or refused the connection."""


class StartError(AgentError, OSError):
    """Something the agent had to open at start (a sensor's driver or bus, the state directory) could not be opened;
    the message says which sensor, bus or path and what was being done. The original error is the __cause__."""
