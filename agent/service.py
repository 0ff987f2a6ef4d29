"""Running under systemd: sd_notify (READY, WATCHDOG, STATUS, RELOADING, STOPPING), the local status socket that
`edge-agent status` reads, and the periodic `health` record.

Owns: the notify protocol (spoken directly over a datagram socket, no dependency), the watchdog decision (ping only
while every stage of the pipeline makes progress), the status socket server (its JSON document is built by
`agent.status`). Must not touch the pipeline's internals beyond its public attributes (`agent.stats`,
`agent.outbox`, `agent.uplink`, `agent.config`, `agent.readers`); records go through `agent.outbox.put` like any
other stage's; the outbox is read through `agent.outbox.OutboxView`, never by SQL of its own.

`agent.app.run` drives it from the main thread:

    service = Service(agent, status_socket=default_status_socket(state_dir))
    agent.start(); service.ready()
    while not stop.wait(1.0): service.tick()
    service.stopping(); agent.stop()

Without `NOTIFY_SOCKET` (a terminal, a test) every notification is a no-op; the status socket and health records
work all the same.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.health import HEALTH_STREAM, HealthMonitor, OutboxHead, counters, drops, live_stage_ages
from agent.records import Emit, iso_ts
from agent.status import last_value, live_document, outbox_wedge
from hal.types import now_ns

log = logging.getLogger("edge_agent.service")

STATUS_SOCKET_NAME = "status.sock"
RUNTIME_DIR_DEFAULT = Path("/run/edge-agent")
RATE_WINDOW_S = 60.0
# A stage that waits on purpose (a slow sensor's poll interval, a reader's retry back-off after a fault) is not
# stuck: reader stages get their interval plus the reader's longest back-off on top of the stall limit.
READER_MAX_BACKOFF_S = 60.0
MAX_CLIENTS = 16  # status socket clients served at once
REQUEST_MAX_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 2.0


# -- sd_notify ------------------------------------------------------------------------------------------------------

def _notify_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace: a leading NUL byte, no file
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock: addresses (systemd >= 253) are not used on a Pi


class Notifier:
    """Speaks the sd_notify protocol: one datagram of `KEY=VALUE` lines per message to `$NOTIFY_SOCKET`.

    A no-op when the variable is unset. A send that fails is logged once and does not raise: the agent keeps
    running (systemd will restart it if it was the watchdog that could not be reached).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = _notify_address(raw)
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a UNIX socket path or @abstract name; not notifying systemd", raw)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False
        self.watchdog_usec = 0
        wd_raw = env.get("WATCHDOG_USEC", "")
        wd_pid = env.get("WATCHDOG_PID", "")
        if wd_raw:
            try:
                usec = int(wd_raw)
                if usec <= 0:
                    raise ValueError
            except ValueError:
                log.warning("WATCHDOG_USEC=%r is not a positive integer; watchdog pings disabled", wd_raw)
            else:
                if wd_pid and wd_pid != str(os.getpid()):
                    log.info("WATCHDOG_PID=%s is not this process (%d); watchdog pings disabled", wd_pid, os.getpid())
                else:
                    self.watchdog_usec = usec

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        data = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self.address)
            except OSError as e:
                if not self._failed:
                    log.error("cannot notify systemd at %r: %s", os.environ.get("NOTIFY_SOCKET", self.address), e)
                    self._failed = True
                return False
        if self._failed:
            log.info("notifying systemd works again")
            self._failed = False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# -- what the agent emits, as seen by status ------------------------------------------------------------------------

class StreamTap:
    """Watches the records the pipeline emits: the last value and actual rate per stream, gaps and gap events.

    Installed on `agent.outbox` through `Outbox.add_observer`. Cheap: a dict update and a deque append per record,
    on the producing thread.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._last: dict[str, Emit] = {}
        self._times: dict[str, deque[float]] = {}
        self._gap_samples: dict[str, int] = {}
        self._gap_events = 0
        self._gap_records = 0
        self._since = time.monotonic()
        self._installed_on: Any = None

    def install(self, outbox: Any) -> None:
        if outbox is self._installed_on:
            return
        outbox.add_observer(self.observe)
        self._installed_on = outbox

    def observe(self, emit: Emit) -> None:
        t = time.monotonic()
        with self._lock:
            if emit.kind == "health":
                return
            self._last[emit.stream] = emit
            q = self._times.setdefault(emit.stream, deque())
            q.append(t)
            while q and t - q[0] > self.window_s:
                q.popleft()
            gap = emit.payload.get("gap_before") if isinstance(emit.payload, dict) else None
            if isinstance(gap, int) and gap > 0:
                self._gap_samples[emit.stream] = self._gap_samples.get(emit.stream, 0) + gap
            if emit.kind == "event" and emit.payload.get("event") == "gap":
                self._gap_events += 1
                count = emit.payload.get("count")
                if isinstance(count, int):
                    self._gap_records += count

    def streams(self) -> dict[str, dict[str, Any]]:
        """Per stream: last record (ts, quality, value or features), its age, the actual rate over the window."""
        t = time.monotonic()
        wall = now_ns()
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            span = min(self.window_s, max(t - self._since, 1e-3))
            for stream, e in self._last.items():
                q = self._times.get(stream, deque())
                n = sum(1 for x in q if t - x <= span)
                out[stream] = {"kind": e.kind, "last": last_value(e.kind, e.ts_ns, e.quality, e.payload),
                               "age_s": round((wall - e.ts_ns) / 1e9, 1),
                               "rate_hz": round(n / span, 3)}
        return out

    def gaps(self) -> dict[str, Any]:
        with self._lock:
            return {"samples_lost": dict(self._gap_samples), "outbox_gap_events": self._gap_events,
                    "outbox_records_dropped": self._gap_records}


# -- the status socket ----------------------------------------------------------------------------------------------

class StatusSocketError(OSError):
    """The status socket cannot be served (path too long, another agent serving it, not a socket)."""


def default_status_socket(state_dir: str | os.PathLike[str]) -> Path:
    """`$RUNTIME_DIRECTORY/status.sock` under systemd (`RuntimeDirectory=`), else `<state_dir>/status.sock`."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "")
    if runtime:
        return Path(runtime.split(":")[0]) / STATUS_SOCKET_NAME
    return Path(state_dir) / STATUS_SOCKET_NAME


def status_socket_candidates(state_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Where a client looks, in order: $RUNTIME_DIRECTORY, /run/edge-agent, the state directory."""
    out: list[Path] = []
    if os.environ.get("RUNTIME_DIRECTORY"):
        out.append(Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]) / STATUS_SOCKET_NAME)
    out.append(RUNTIME_DIR_DEFAULT / STATUS_SOCKET_NAME)
    if state_dir is not None:
        out.append(Path(state_dir) / STATUS_SOCKET_NAME)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def request(path: str | os.PathLike[str], body: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    """Send one request to a status socket and return the JSON document it answers. Raises OSError (or
    ValueError for an answer that is not a JSON object)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(body).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    doc = json.loads(b"".join(chunks).decode() or "null")
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def read_status(path: str | os.PathLike[str], timeout: float = 3.0) -> dict[str, Any]:
    """The running agent's status document from its socket. Raises OSError (or ValueError for bad JSON)."""
    return request(path, {"cmd": "status"}, timeout)


@dataclass(frozen=True)
class _BadRequest:
    message: str


class StatusServer:
    """Serves one JSON document per connection on a UNIX stream socket (mode 0660).

    A client may send one request line first (`{"cmd": "status"}`, `{"cmd": "capture", ...}`); a client that sends
    nothing (`socat - UNIX-CONNECT:status.sock`) gets the status document. Each client is served on a thread of its
    own, at most MAX_CLIENTS at once (beyond: an immediate `busy` answer), so a slow client or a capture never holds
    up another `status`. A request line is at most REQUEST_MAX_BYTES and must be complete within
    REQUEST_TIMEOUT_S; anything else gets an error answer. No request can stop the server.
    """

    def __init__(self, path: str | os.PathLike[str], document: Callable[[], dict[str, Any]],
                 handlers: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None) -> None:
        self.path = Path(path)
        self.document = document
        self.handlers = dict(handlers or {})
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self.refused = 0  # clients answered "busy" because every slot was taken

    def start(self) -> None:
        path = self.path
        if len(os.fsencode(path)) >= 108:
            raise StatusSocketError(f"status socket path {path} is too long for a UNIX socket (at most 107 bytes)")
        if path.exists() or path.is_symlink():
            st = path.lstat()
            if not stat.S_ISSOCK(st.st_mode):
                raise StatusSocketError(f"{path} exists and is not a socket; not replacing it")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.settimeout(1.0)
                    probe.connect(str(path))
            except OSError:
                path.unlink()  # stale: left by an agent that was killed
            else:
                raise StatusSocketError(f"another edge-agent is serving {path}; is the service already running?")
        path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            old = os.umask(0o117)  # created 0660, never briefly world-accessible
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            os.chmod(path, 0o660)
            sock.listen(64)
            sock.settimeout(0.5)
        except OSError as e:
            sock.close()
            raise StatusSocketError(f"cannot serve the status socket {path}: {e.strerror or e}") from e
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="status-socket", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                time.sleep(0.1)
                continue
            try:
                if not self._clients.acquire(blocking=False):  # every client slot taken: answer at once, close
                    self.refused += 1
                    self._answer(conn, lambda: {"error": f"busy: {MAX_CLIENTS} requests are being served; "
                                                         f"try again"}, timeout=0.5)
                    continue
                threading.Thread(target=self._client, args=(conn,), name="status-client", daemon=True).start()
            except Exception:  # cannot start a thread (memory): drop this client, keep serving
                log.exception("status socket: cannot serve a client")
                self._clients.release()
                conn.close()

    def _client(self, conn: socket.socket) -> None:
        """One client on its own thread: a slow or silent client holds up only itself."""
        try:
            req = self._request(conn)
            if isinstance(req, _BadRequest):
                self._answer(conn, lambda: {"error": req.message})
                return
            cmd = req.get("cmd", "status") if isinstance(req, dict) else None
            if cmd == "status":
                self._answer(conn, self.document)
            elif isinstance(cmd, str) and cmd in self.handlers:
                self._answer(conn, lambda: self.handlers[cmd](req))
            else:
                known = ", ".join(["status", *self.handlers])
                shown = json.dumps(req, default=str)[:120] if not isinstance(req, str) else repr(req)
                self._answer(conn, lambda: {"error": f"unknown request {shown}; expected a JSON object with "
                                                     f"\"cmd\" one of: {known}"})
        except Exception:  # a bug must not cost the server its thread or a client slot
            log.exception("status socket: serving a request failed")
            conn.close()
        finally:
            self._clients.release()

    @staticmethod
    def _request(conn: socket.socket) -> Any:
        """The client's request line: {} when it sends nothing within 0.3 s, the raw text when it is not JSON, a
        `_BadRequest` when it is larger than REQUEST_MAX_BYTES or not complete within REQUEST_TIMEOUT_S."""
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        data = b""
        conn.settimeout(0.3)
        try:
            while b"\n" not in data and len(data) <= REQUEST_MAX_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    return _BadRequest(f"request not complete within {REQUEST_TIMEOUT_S:g} s; expected one JSON "
                                       f"line ending in a newline")
                if data:  # started: the rest must come before the deadline
                    conn.settimeout(left)
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            if data:
                return _BadRequest(f"request not complete within {REQUEST_TIMEOUT_S:g} s; expected one JSON line "
                                   f"ending in a newline")
        except OSError:
            pass
        line = data.split(b"\n", 1)[0]
        if len(line) > REQUEST_MAX_BYTES:
            StatusServer._discard(conn, deadline)  # closing with unread data would reset the answer away
            return _BadRequest(f"request too large: expected at most {REQUEST_MAX_BYTES} bytes")
        line = line.strip()
        if not line:
            return {}
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            return line.decode(errors="replace")[:80]

    @staticmethod
    def _discard(conn: socket.socket, deadline: float) -> None:
        """Read and drop what the client still sends, until the end of its line, EOF or the deadline."""
        try:
            while (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                chunk = conn.recv(65536)
                if not chunk or b"\n" in chunk:
                    return
        except OSError:
            pass

    @staticmethod
    def _answer(conn: socket.socket, build: Callable[[], dict[str, Any]], timeout: float = 5.0) -> None:
        with conn:
            try:
                conn.settimeout(timeout)
                body = json.dumps(build(), separators=(",", ":"), default=str, allow_nan=False)
                conn.sendall(body.encode() + b"\n")
            except (OSError, ValueError) as e:
                log.debug("status client: %s", e)
            except Exception:  # a bug building the answer must not kill the server
                log.exception("answering a status socket request failed")
                try:
                    conn.sendall(b'{"error":"internal error answering the request (see the agent log)"}\n')
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                if stat.S_ISSOCK(self.path.lstat().st_mode):
                    self.path.unlink()
            except OSError:
                pass


# -- the service ----------------------------------------------------------------------------------------------------

class Service:
    """The agent as a systemd service: readiness, watchdog, status, health. Call from the main thread."""

    def __init__(self, agent: Any, *, status_socket: Path | None = None, health_interval_s: float = 60.0,
                 status_interval_s: float = 10.0, min_stall_s: float = 5.0,
                 reader_grace_s: float = READER_MAX_BACKOFF_S, environ: Mapping[str, str] | None = None) -> None:
        self.agent = agent
        self.notifier = Notifier(environ)
        self.status_socket = Path(status_socket) if status_socket is not None else None
        self.health_interval_s = health_interval_s
        self.status_interval_s = status_interval_s
        wd = self.notifier.watchdog_usec
        # a stage that has not gone round its loop for this long is stuck: half the watchdog, at least 5 s
        self.stall_limit_s = max(wd / 2e6, min_stall_s) if wd else max(10.0, min_stall_s)
        self.reader_grace_s = reader_grace_s
        self.tap = StreamTap()
        self.tap.install(agent.outbox)
        self.health = HealthMonitor(agent)
        self._server: StatusServer | None = None
        self._reader: Any = None
        self._reader_lock = threading.Lock()
        self._next_health = 0.0
        self._last_status = ""
        self._last_status_t = 0.0
        self._stalled: list[str] = []
        self._ready = False
        self.watchdog_pings = 0
        self._acq_history: deque[tuple[float, dict[str, int]]] = deque()
        self._acq_lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------------------------------

    def ready(self) -> None:
        """The pipeline runs: READY=1, serve the status socket, publish the first health record."""
        if self.status_socket is not None:
            server = StatusServer(self.status_socket, self.status_document, {"capture": self.capture})
            try:
                server.start()
            except StatusSocketError as e:
                log.error("%s; `edge-agent status` will read the outbox database instead", e)
            else:
                self._server = server
                log.info("status socket: %s", self.status_socket)
        self._ready = True
        status = self._status_line()
        self._last_status, self._last_status_t = status, time.monotonic()
        self.notifier.send("READY=1", f"STATUS={status}")
        if self.notifier.watchdog_usec:
            log.info("systemd watchdog every %.0f s; a stage without progress for %.0f s stops the pings",
                     self.notifier.watchdog_usec / 1e6, self.stall_limit_s)
        self._emit_health()

    def tick(self) -> None:
        """About once a second: WATCHDOG=1 while every stage makes progress, STATUS= when it changes, health."""
        now = time.monotonic()
        stalled = self.stalled()
        if stalled and stalled != self._stalled:
            log.error("stalled: %s made no progress for more than %.0f s%s", ", ".join(stalled), self.stall_limit_s,
                      "; withholding watchdog pings so systemd restarts the agent" if self.notifier.watchdog_usec
                      else "")
        elif not stalled and self._stalled:
            log.warning("every stage is making progress again")
        self._stalled = stalled
        status = self._status_line()
        lines = []
        if not stalled and self.notifier.watchdog_usec:
            lines.append("WATCHDOG=1")
        if status != self._last_status or now - self._last_status_t >= self.status_interval_s:
            lines.append(f"STATUS={status}")
            self._last_status, self._last_status_t = status, now
        if lines and self.notifier.send(*lines) and lines[0] == "WATCHDOG=1":
            self.watchdog_pings += 1
        self._sample_acquisition(now)
        if now >= self._next_health:
            self._emit_health()

    # -- acquisition rates: from the readers' counters, when the pipeline keeps them --------------------------

    def _sample_acquisition(self, now: float) -> None:
        """Keep a minute of the `samples.<sensor>` / `reads.<sensor>` counters (one snapshot per tick)."""
        snap = {k: v for k, v in counters(self.agent.stats).items()
                if isinstance(v, int) and k.startswith(("samples.", "reads."))}
        with self._acq_lock:
            self._acq_history.append((now, snap))
            while len(self._acq_history) > 2 and now - self._acq_history[1][0] >= RATE_WINDOW_S:
                self._acq_history.popleft()

    def acquisition_rate(self, sensor: Any) -> float | None:
        """Samples/s (stream) or reads/s (slow) over the last minute, None without the reader's counter."""
        key = f"{'samples' if getattr(sensor, 'kind', 'slow') == 'stream' else 'reads'}.{sensor.name}"
        with self._acq_lock:
            if len(self._acq_history) < 2:
                return None
            (t0, c0), (t1, c1) = self._acq_history[0], self._acq_history[-1]
        if key not in c1 or t1 <= t0:
            return None
        return round((c1[key] - c0.get(key, 0)) / (t1 - t0), 3)

    def reloading(self) -> None:
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}",
                           "STATUS=reloading the configuration")

    def reloaded(self, ok: bool, message: str) -> None:
        if ok:
            log.info("configuration reloaded: %s", message)
            status = f"reloaded: {message}; {self._status_line()}"
        else:
            log.error("configuration rejected, keeping the running one: %s", message)
            status = f"reload rejected, running the previous configuration: {message}"
        self._last_status, self._last_status_t = status, time.monotonic()
        self.notifier.send("READY=1", f"STATUS={_one_line(status)}")

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1", "STATUS=stopping: flushing the outbox")
        if self._server is not None:
            self._server.stop()
            self._server = None
        with self._reader_lock:
            if self._reader is not None:
                try:
                    self._reader.close()
                except Exception:
                    pass
                self._reader = None
        self.notifier.close()

    # -- decisions --------------------------------------------------------------------------------------------

    def stalled(self) -> list[str]:
        """Stages without progress for longer than the limit. Stages that wait on purpose get that time on top:
        readers their poll interval and retry back-off, the uplink its reconnect back-off and connect timeout."""
        stats = self.agent.stats
        base = stats.stalled(self.stall_limit_s)
        if not base:
            return []
        allowance: dict[str, float] = {}
        current = {f"reader.{getattr(r.sensor, 'name', '')}" for r in getattr(self.agent, "readers", [])}
        # readers of a configuration replaced by a reload leave their last progress behind: not stuck, gone
        base = [s for s in base if not s.startswith("reader.") or s in current]
        for r in getattr(self.agent, "readers", []):
            sensor = getattr(r, "sensor", None)
            if sensor is not None:
                extra = (getattr(sensor, "interval_s", 0.0) if getattr(sensor, "kind", "slow") == "slow" else 0.0)
                allowance[f"reader.{sensor.name}"] = self.stall_limit_s + extra + self.reader_grace_s
        # the uplink sleeps through its reconnect back-off (up to reconnect_max_s) and blocks in connect (up to
        # connect_timeout_s) while the broker is away: a broker outage is not a stuck agent
        mqtt = self.agent.config.mqtt
        allowance["uplink"] = self.stall_limit_s + float(getattr(mqtt, "reconnect_max_s", 30.0)) + \
            float(getattr(mqtt, "connect_timeout_s", 10.0))
        out = []
        for stage in base:
            if stage in allowance:
                if stage in stats.stalled(allowance[stage]):
                    out.append(stage)
            else:
                out.append(stage)
        return out

    def _status_line(self) -> str:
        agent = self.agent
        depth = int(getattr(agent.outbox, "depth", 0))
        link = counters(agent.stats).get("link", "down")
        broker = agent.config.mqtt.broker.url
        text = f"{len(agent.config.sensors)} sensors; outbox {depth} records; link {link} ({broker})"
        fault = getattr(agent.outbox, "fault", None)
        if fault:
            info = outbox_wedge(agent.outbox)
            text += f"; OUTBOX WEDGED ({str(info.get('fault_cause') or 'error').replace('_', ' ')}): {fault}"
        if self._stalled:
            text = f"STALLED: {', '.join(self._stalled)}; " + text
        return _one_line(text)

    # -- outbox head (a read connection of our own) -----------------------------------------------------------

    def _outbox_head(self) -> OutboxHead:
        depth = int(getattr(self.agent.outbox, "depth", 0))
        oldest = None
        size = None
        with self._reader_lock:
            try:
                if self._reader is None:
                    from agent.outbox import OutboxView
                    self._reader = OutboxView(self.agent.outbox.path)
                oldest = self._reader.first_ts_ns()
            except Exception as e:
                log.debug("reading the outbox head: %s", e)
                self._reader = None
        path = getattr(self.agent.outbox, "path", None)
        if path is not None:
            try:
                size = sum(p.stat().st_size for p in (Path(path), Path(f"{path}-wal")) if p.exists())
            except OSError:
                size = None
        return OutboxHead(depth, oldest, size)

    # -- health -----------------------------------------------------------------------------------------------

    def health_payload(self) -> dict[str, Any]:
        return self.health.sample(self._outbox_head())

    def _emit_health(self) -> None:
        self._next_health = time.monotonic() + self.health_interval_s
        try:
            payload = self.health_payload()
            self.agent.outbox.put(Emit("health", HEALTH_STREAM, now_ns(), payload))
        except Exception:  # self-monitoring must never take the agent down
            log.exception("building the health record failed")

    # -- capture on request (edge-agent capture, while the service owns the hardware) --------------------------

    def capture(self, req: dict[str, Any]) -> dict[str, Any]:
        """`{"cmd": "capture", "sensor": NAME, "seconds": S}` -> the raw window as a `capture` record payload."""
        sensor, seconds = req.get("sensor"), req.get("seconds")
        if not isinstance(sensor, str) or not isinstance(seconds, (int, float)) or isinstance(seconds, bool) \
                or not 0 < seconds <= 60:  # NaN fails the comparison too
            return {"error": "expected {\"sensor\": NAME, \"seconds\": S} with 0 < S <= 60"}
        try:
            emit = self.agent.capture(sensor, float(seconds), timeout_s=seconds * 2 + 10)
        except (ValueError, TimeoutError, RuntimeError) as e:  # RuntimeError: CaptureBusy, "busy: ..."
            return {"error": str(e)}
        return {"capture": emit.payload, "ts": iso_ts(emit.ts_ns), "quality": str(emit.quality)}

    # -- the status document ----------------------------------------------------------------------------------

    def status_document(self) -> dict[str, Any]:
        """The status document (agent.status) of the running service, as the status socket serves it."""
        agent = self.agent
        snap = counters(agent.stats)
        return live_document(
            agent, counters=snap, outbox_head=self._outbox_head(), streams=self.tap.streams(), gaps=self.tap.gaps(),
            acquisition_hz={s.name: self.acquisition_rate(s) for s in agent.config.sensors}, drops=drops(snap),
            stages=live_stage_ages(agent), stalled=self._stalled if self._ready else [],
            watchdog={"enabled": bool(self.notifier.watchdog_usec),
                      "interval_s": self.notifier.watchdog_usec / 1e6 if self.notifier.watchdog_usec else None,
                      "stall_limit_s": self.stall_limit_s})


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]
