"""Downlink commands: `<prefix>/<agent>/cmd/<name>` with a JSON body, answered on `<prefix>/<agent>/cmd-response`.

Off unless `[commands] enabled = true`; only the names in `commands.allow` are accepted. Commands:

* `ping` → `{"pong": true, "version", "uptime_s"}`
* `capture` `{"sensor": NAME, "seconds": S}` → a `capture` record of the raw window on stream `<sensor>.capture`
  (through the outbox like every record), answered once captured
* `set` `{"target": "SENSOR[.CHANNEL]", "value": V}` → written through the driver's `write(channel, value)`, which
  enforces the limits configured for that output and returns the value read back; answered with it
* `reload` → re-read the config file; a bad one is rejected and the running one kept

Every request carries a correlation `id` (string or integer) echoed in the response. Unknown, malformed, oversized,
out-of-range or not-allowed commands get an error response (`ok: false`, `error: {code, message}`) and an audit
log line; none can crash the agent. Commands run one at a time on their own thread, never on the network thread.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import COMMANDS
from agent.records import iso_ts
from hal.options import describe_number, finite_problem
from hal.types import now_ns

if TYPE_CHECKING:
    from agent.pipeline import Pipeline

audit = logging.getLogger("edge_agent.audit")
KNOWN = COMMANDS  # the names commands.allow may list (agent.config declares the setting)


class CommandError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CommandHandler:
    def __init__(self, agent: "Pipeline", queue_size: int = 32) -> None:
        self.agent = agent
        self.config = agent.config.commands
        self._queue: queue.Queue[tuple[str, bytes, bool] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            if threading.current_thread() is not self._thread:  # a `reload` command stops its own handler
                self._thread.join(self.config.capture_max_s + 5)
            self._thread = None

    def submit(self, name: str, payload: bytes, silent: bool = False) -> None:
        """Called on the uplink's thread: never blocks, never raises. `silent`: audit only, no response."""
        try:
            self._queue.put_nowait((name, payload, silent))
        except queue.Full:
            self._respond(name, None, error=CommandError("busy", "too many commands waiting; try again"),
                          silent=silent)

    def write(self, target: str, value: Any) -> None:
        """A Sparkplug DCMD metric write: the same `set` path, allow-list and limits; audited, no response topic."""
        body = json.dumps({"id": f"DCMD:{target}", "target": target, "value": value}).encode()
        self.submit("set", body, silent=True)

    def _run(self) -> None:
        while True:
            self.agent.stats.progress("commands")  # idle is progress too: the watchdog looks for stuck stages
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if item is None:
                return
            name, payload, silent = item
            cid: Any = None
            try:
                request = self._parse(name, payload)
                cid = request["id"]
                result = self._dispatch(name, request)
            except CommandError as e:
                self._respond(name, cid, error=e, silent=silent)
            except Exception as e:  # a bug in a handler: answered and logged, the agent keeps running
                audit.exception("command %s id=%r failed", name, cid)
                self._respond(name, cid, error=CommandError("internal", f"{type(e).__name__}: {e}"),
                              silent=silent)
            else:
                self._respond(name, cid, result=result, silent=silent)

    def _parse(self, name: str, payload: bytes) -> dict[str, Any]:
        if len(payload) > self.config.max_bytes:
            raise CommandError("too_large", f"expected a body of at most {self.config.max_bytes} bytes, "
                                            f"got {len(payload)}")
        if name not in KNOWN:
            raise CommandError("unknown_command", f"expected one of {', '.join(KNOWN)}, got {name[:64]!r}")
        if name not in self.config.allow:
            raise CommandError("not_allowed", f"command {name!r} is not in commands.allow")
        try:
            request = json.loads(payload.decode("utf-8")) if payload.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CommandError("malformed", f"expected a JSON object: {e}") from None
        if not isinstance(request, dict):
            raise CommandError("malformed", "expected a JSON object with a correlation id, e.g. {\"id\": \"42\"}")
        cid = request.get("id")
        if not (isinstance(cid, str) and 0 < len(cid) <= 128) and not (isinstance(cid, int)
                                                                         and not isinstance(cid, bool)):
            raise CommandError("malformed", "expected \"id\": a string (1-128 characters) or an integer")
        return request

    def _dispatch(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        return getattr(self, f"_cmd_{name}")(request)

    # -- the commands -----------------------------------------------------------------------------------------

    def _cmd_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "version": __version__, "uptime_s": round((now_ns() - self.agent.boot_ns) / 1e9, 3)}

    def _cmd_capture(self, request: dict[str, Any]) -> dict[str, Any]:
        sensor = request.get("sensor")
        seconds = request.get("seconds", 1.0)
        if not isinstance(sensor, str):
            raise CommandError("bad_argument", "expected \"sensor\": the name of a stream sensor")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                0 < seconds <= self.config.capture_max_s):
            raise CommandError("out_of_range", f"expected \"seconds\" greater than 0 and at most "
                                               f"{self.config.capture_max_s:g}, got {seconds!r}")
        try:
            emit = self.agent.capture(sensor, float(seconds), timeout_s=float(seconds) * 3 + 5)
        except ValueError as e:
            raise CommandError("bad_argument", str(e)) from None
        except TimeoutError as e:
            raise CommandError("timeout", str(e)) from None
        except RuntimeError as e:  # CaptureBusy
            raise CommandError("busy", str(e)) from None
        return {"stream": emit.stream, "samples": emit.payload["n"], "rate_hz": emit.payload["rate_hz"]}

    def _cmd_set(self, request: dict[str, Any]) -> dict[str, Any]:
        target = request.get("target")
        if not isinstance(target, str) or not target:
            raise CommandError("bad_argument", "expected \"target\": \"SENSOR\" or \"SENSOR.CHANNEL\"")
        if "value" not in request:
            raise CommandError("bad_argument", "expected \"value\"")
        value = request["value"]
        problem = finite_problem(value)  # NaN/Infinity (Python's json accepts them), integers too large for a float
        if problem:
            raise CommandError("out_of_range", f"{problem}, got {describe_number(value)}")
        if not isinstance(value, (bool, int, float, str)):
            raise CommandError("bad_argument", f"expected \"value\": a number, true/false or a string, got "
                                               f"{type(value).__name__}")
        reader, channel = self._resolve(target)
        write = getattr(reader.source, "write", None)
        if write is None:
            raise CommandError("not_writable", f"{reader.sensor.name} ({reader.sensor.driver}) has no writable "
                                               f"outputs")
        try:
            readback = write(channel, value)
        except PermissionError as e:
            raise CommandError("not_writable", str(e)) from None
        except (ValueError, TypeError, KeyError) as e:
            raise CommandError("out_of_range", str(e)) from None
        except OSError as e:
            raise CommandError("write_failed", f"{type(e).__name__}: {e}") from None
        confirmed = readback == value or (isinstance(value, (int, float)) and isinstance(readback, (int, float))
                                          and abs(readback - value) <= 1e-6 * max(1.0, abs(value)))
        if not confirmed:
            raise CommandError("not_confirmed", f"wrote {value!r} to {target} but read back {readback!r}")
        return {"target": target, "value": readback}

    def _resolve(self, target: str) -> tuple[Any, str | None]:
        """The longest configured sensor name that `target` starts with; the rest is the channel."""
        best = None
        for reader in self.agent.readers:
            name = reader.sensor.name
            if target == name or target.startswith(name + "."):
                if best is None or len(name) > len(best.sensor.name):
                    best = reader
        if best is None:
            raise CommandError("bad_argument", f"no configured sensor or output named {target!r}")
        rest = target[len(best.sensor.name) + 1:]
        return best, rest or None

    def _cmd_reload(self, request: dict[str, Any]) -> dict[str, Any]:
        ok, message = self.agent.reload()
        if not ok:
            raise CommandError("config_rejected", message)
        return {"message": message}

    # -- responses --------------------------------------------------------------------------------------------

    def _respond(self, name: str, cid: Any, *, result: dict[str, Any] | None = None,
                 error: CommandError | None = None, silent: bool = False) -> None:
        body: dict[str, Any] = {"agent": self.agent.config.agent.id, "id": cid, "command": name[:64],
                                "ok": error is None, "ts": iso_ts(now_ns())}
        if error is None:
            body["result"] = result or {}
            self.agent.stats.inc("commands_ok")
            audit.info("command %s id=%r: ok", name, cid)
        else:
            body["error"] = {"code": error.code, "message": error.message}
            self.agent.stats.inc("commands_rejected")
            audit.warning("command %s id=%r rejected: %s: %s", name[:64], cid, error.code, error.message)
        if not silent:
            self.agent.uplink.respond(json.dumps(body, separators=(",", ":")).encode())
