from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Numba compiles once per machine into a writable cache, shared by the tests' processes.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "numba"))

from tests.mqtt_helpers import MosquittoBroker, Subscriber  # noqa: E402


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture
def subscriber_factory() -> Iterator[object]:
    subs: list[Subscriber] = []

    def make(port: int, topic: str = "#", persistent: bool = False) -> Subscriber:
        s = Subscriber(port, topic, client_id=f"test-sub-{len(subs)}-{os.getpid()}", persistent=persistent)
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()
