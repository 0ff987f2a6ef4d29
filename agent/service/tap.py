"""The stream-rate tap: what the pipeline emits, as the status document shows it (last value, actual rate, gaps).

Owns only its in-memory window. Must not write records or read the outbox database: it observes `Outbox.put`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from agent.records import Emit
from agent.status import last_value
from hal.types import now_ns

RATE_WINDOW_S = 60.0


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


__all__ = ["RATE_WINDOW_S", "StreamTap"]
