"""The local status socket: the server the running agent serves and the client `edge-agent status` and `capture`
use.

Owns the socket's path rules, its one-request-per-connection JSON protocol and its limits (clients at once, request
size and time). Must not build the status document (`agent.status`, handed in as a callable) nor touch the
pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("edge_agent.service")

STATUS_SOCKET_NAME = "status.sock"
RUNTIME_DIR_DEFAULT = Path("/run/edge-agent")
MAX_CLIENTS = 16  # status socket clients served at once
REQUEST_MAX_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 2.0


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


__all__ = ["STATUS_SOCKET_NAME", "RUNTIME_DIR_DEFAULT", "MAX_CLIENTS", "REQUEST_MAX_BYTES", "REQUEST_TIMEOUT_S",
           "StatusSocketError", "StatusServer", "default_status_socket", "status_socket_candidates", "request",
           "read_status"]
