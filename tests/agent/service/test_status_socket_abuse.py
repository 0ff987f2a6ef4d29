"""The status socket against bad clients, on a running agent: malformed requests, oversized ones, slow clients,
too many captures. Each gets a clear answer; the server keeps serving everyone else."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.pipeline import MAX_CAPTURES
from agent.service import REQUEST_MAX_BYTES, Service, read_status
from tests.agent_helpers import run_agent
from tests.agent.service.helpers import service_config


@pytest.fixture
def running(broker, tmp_path: Path):
    agent = run_agent(service_config(broker.port), tmp_path / "state")
    service = Service(agent, status_socket=tmp_path / "run" / "status.sock", environ={})
    service.ready()
    yield agent, service, tmp_path / "run" / "status.sock"
    service.stopping()
    agent.stop(drain_s=0.5)


def raw(path: Path, data: bytes, timeout: float = 20.0) -> dict:
    """Send bytes as they are, half-close, read the whole answer: it must be one JSON object."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before reading it all (an oversized request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    doc = json.loads(b"".join(chunks))
    assert isinstance(doc, dict)
    return doc


def _serving(service: Service, path: Path) -> bool:
    assert service._server is not None and service._server._thread is not None
    return service._server._thread.is_alive() and read_status(path, timeout=20)["source"] == "service"


@pytest.mark.parametrize("line", [
    b'{"cmd": []}\n', b'{"cmd": {}}\n', b'{"cmd": null}\n', b'{"cmd": 1e999}\n', b"[]\n", b'"status"\n', b"null\n",
    b"42\n", b"\xff\xfe\n", b"[" * 60000 + b"\n", b'{"cmd": "capture"}\n', b'{"cmd": "capture", "sensor": []}\n',
    b'{"cmd": "capture", "sensor": "vib", "seconds": NaN}\n',
    b'{"cmd": "capture", "sensor": "vib", "seconds": 1e400}\n',
    b'{"cmd": "capture", "sensor": {"a": 1}, "seconds": 1}\n',
])
def test_malformed_requests_get_an_error_and_the_server_keeps_serving(running, line: bytes) -> None:
    agent, service, path = running
    answer = raw(path, line)
    assert "error" in answer and "expected" in answer["error"], answer
    assert _serving(service, path)


def test_an_oversized_request_is_refused(running) -> None:
    _, service, path = running
    answer = raw(path, b'{"cmd": "status", "pad": "' + b"x" * (REQUEST_MAX_BYTES + 10) + b'"}\n')
    assert answer["error"].startswith(f"request too large: expected at most {REQUEST_MAX_BYTES} bytes")
    assert _serving(service, path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.binary(max_size=200),
    st.dictionaries(st.sampled_from(["cmd", "sensor", "seconds", "x"]),
                    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                              st.lists(st.integers(), max_size=3), st.sampled_from(["status", "capture", "vib"])),
                    max_size=4).map(lambda d: json.dumps(d).encode()),
))
def test_any_request_is_answered_with_a_json_object(running, body: bytes) -> None:
    _, service, path = running
    if json_capture_seconds(body) > 0.5:
        return  # a long valid capture would only slow the test down
    answer = raw(path, body.replace(b"\n", b" ") + b"\n")
    assert ("error" in answer) or ("source" in answer) or ("capture" in answer), answer
    assert service._server is not None and service._server._thread.is_alive()


def json_capture_seconds(body: bytes) -> float:
    try:
        doc = json.loads(body)
        s = doc.get("seconds", 0) if isinstance(doc, dict) and doc.get("cmd") == "capture" else 0
        return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else 0.0
    except (ValueError, OverflowError):
        return 0.0


def test_a_slow_client_does_not_hold_up_the_others(running) -> None:
    """One client sends a byte every 0.25 s; status requests from others are answered meanwhile, and the slow
    client is told its request did not complete in time."""
    _, service, path = running
    slow_answer: list[dict] = []
    done = threading.Event()

    def slow() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(path))
            try:
                for b in b'{"cmd": "status"' + b" " * 200:
                    if done.is_set():
                        break
                    s.send(bytes([b]))
                    time.sleep(0.25)
            except OSError:
                pass  # the server gave up on it and closed
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError:
                pass
            if data:
                slow_answer.append(json.loads(data))

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    time.sleep(0.6)
    for _ in range(3):
        assert t.is_alive(), "the slow client is still sending"
        assert read_status(path, timeout=20)["source"] == "service"
    done.set()
    t.join(30)
    assert slow_answer and "not complete within" in slow_answer[0]["error"], slow_answer


def test_captures_beyond_the_cap_are_refused_as_busy(running) -> None:
    agent, service, path = running
    n = MAX_CAPTURES + 3
    answers: list[dict] = []
    lock = threading.Lock()

    def capture() -> None:
        a = raw(path, b'{"cmd": "capture", "sensor": "vib", "seconds": 3}\n', timeout=60)
        with lock:
            answers.append(a)

    threads = [threading.Thread(target=capture, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == n
    busy = [a for a in answers if "error" in a and a["error"].startswith("busy:")]
    done = [a for a in answers if "capture" in a]
    assert len(busy) >= n - MAX_CAPTURES and len(done) >= 1, answers
    assert len(busy) + len(done) == n
    assert agent.stats.get("captures_refused") == len(busy)
    assert _serving(service, path)
