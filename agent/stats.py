"""Counters and gauges shared by the pipeline stages (thread-safe), read by the console, status and health."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = defaultdict(int)
        self._gauges: dict[str, Any] = {}
        self._progress: dict[str, float] = {}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def set(self, name: str, value: Any) -> None:
        with self._lock:
            self._gauges[name] = value

    def get(self, name: str, default: Any = 0) -> Any:
        with self._lock:
            if name in self._counters:
                return self._counters[name]
            return self._gauges.get(name, default)

    def progress(self, stage: str) -> None:
        """A stage calls this each time round its loop: the watchdog pings only while every stage does."""
        with self._lock:
            self._progress[stage] = time.monotonic()

    def progress_ages(self) -> dict[str, float]:
        """Seconds since each stage last went round its loop."""
        now = time.monotonic()
        with self._lock:
            return {s: now - t for s, t in self._progress.items()}

    def stalled(self, max_age_s: float) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return sorted(s for s, t in self._progress.items() if now - t > max_age_s)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counters)
            out.update(self._gauges)
            return out
