"""The live console: what an engineer wants to see in the first minute of `edge-agent run` in a terminal.

Each sensor's latest value, unit, quality and age; for a vibration sensor its severity (velocity RMS, ISO zone) and
bearing indicators (BPFO, BPFI, envelope RMS); machine state and availability; the latest events; outbox depth,
link state and messages per second; and, when emulating, plant time, speed and the scenario's steps.

It reads what the pipeline hands to the outbox (an outbox observer: every accepted record passes there, so the
view is complete even while the broker is down) and the shared `Stats`. It never blocks the pipeline: `observe`
only stores the latest record per stream. Only for a terminal: `cmd_run` starts it when stdout is a TTY; under
systemd (no TTY) the agent logs plain lines instead. While it runs, log lines are printed above the live view.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agent.records import Emit

QUALITY_STYLE = {"good": "green", "uncertain": "yellow", "bad": "bold red"}
ZONE_STYLE = {"A": "green", "B": "green", "C": "yellow", "D": "bold red"}
STATE_STYLE = {"running": "green", "idle": "yellow", "off": "dim"}
_DERIVED = (".stats", ".state", ".events", ".capture")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.1f}"
    return str(value)


def _age(seconds: float) -> str:
    if seconds < 0:
        return "0 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_event(p: dict[str, Any]) -> str:
    """One line for an event payload: "zone → C (was B)", "state → running (was idle for 10 s)", "gap ..."."""
    what = str(p.get("event", "event"))
    if what in p:
        line = f"{what} → {_fmt(p[what], 3)}"
        if p.get("previous") is not None:
            line += f" (was {_fmt(p['previous'], 3)}"
            line += f" for {_age(p['previous_s'])})" if isinstance(p.get("previous_s"), (int, float)) else ")"
        return line
    if what.startswith("anomaly"):
        return f"{what}: {p.get('feature')} = {_fmt(p.get('value'), 3)} (z {_fmt(p.get('z'), 2)})"
    detail = {k: v for k, v in p.items() if k != "event" and not isinstance(v, (dict, list))}
    return f"{what} " + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in list(detail.items())[:4])


class LiveView:
    """Latest record per stream, rendered as a rich view. `attach()` taps the agent's outbox; `start()` draws."""

    def __init__(self, agent: Any, *, runner: Any = None, console: Console | None = None,
                 refresh_s: float = 0.5) -> None:
        self.agent = agent
        self.runner = runner
        self.console = console or Console()
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._latest: dict[str, Emit] = {}
        self._events: deque[Emit] = deque(maxlen=6)
        self._published: deque[tuple[float, int]] = deque(maxlen=20)
        self._attached = False
        self._live: Live | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._handlers: list[tuple[logging.Handler, logging.Handler]] = []

    # -- data ---------------------------------------------------------------------------------------------------
    def observe(self, emit: Emit) -> None:
        with self._lock:
            self._latest[emit.stream] = emit
            if emit.kind == "event":
                self._events.append(emit)

    def attach(self) -> "LiveView":
        """Observe every record the outbox accepts (once; the outbox has no way to remove an observer, so a
        stopped view keeps only storing the latest record per stream, which is cheap)."""
        if not self._attached:
            self.agent.outbox.add_observer(self.observe)
            self._attached = True
        return self

    def _now_ns(self) -> int:
        ctx = getattr(self.agent, "context", None)
        clock = getattr(ctx, "clock", None)
        return clock.time_ns() if clock is not None else time.time_ns()

    def messages_per_s(self) -> float:
        now = time.monotonic()
        published = int(self.agent.stats.get("uplink_published", 0))
        self._published.append((now, published))
        while len(self._published) > 2 and now - self._published[0][0] > 5.0:
            self._published.popleft()
        (t0, n0), (t1, n1) = self._published[0], self._published[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    # -- rendering ----------------------------------------------------------------------------------------------
    def header(self) -> Text:
        agent, stats = self.agent, self.agent.stats
        link = stats.get("link", "connecting") or "connecting"
        drops = sum(v for k, v in stats.snapshot().items()
                    if isinstance(v, int) and k.startswith(("processing_queue_full", "outbox_dropped")))
        t = Text()
        t.append(f"edge-agent {agent.config.agent.id}", style="bold")
        t.append(f"  broker {agent.config.mqtt.broker.url}  link ")
        t.append(str(link).upper(), style="bold green" if link == "up" else "bold red")
        t.append(f"  outbox {agent.outbox.depth}  {self.messages_per_s():.1f} msg/s")
        t.append(f"  drops {drops}", style="bold red" if drops else "")
        plant = getattr(agent, "plant", None) or getattr(getattr(agent, "context", None), "plant", None)
        if plant is not None:
            speed = getattr(plant.clock, "speed", 1.0)
            t.append(f"\nplant t = {_age(plant.now())}" + (f"  ×{speed:g}" if speed != 1 else ""))
            try:
                t.append(f"  machine {plant.state(plant.now())}", style=STATE_STYLE.get(plant.state(plant.now()), ""))
            except Exception:
                pass
        if self.runner is not None:
            r = self.runner
            t.append(f"  scenario {r.scenario.name} at {_age(r.elapsed())}")
            if r.log:
                at, label, result = r.log[-1]
                t.append(f"  last: {label} @ {_age(at)}", style="" if result == "ok" else "red")
            if r.errors:
                t.append(f"  ({r.errors} failed)", style="red")
        return t

    def _channels(self, sensor: str) -> list[Emit]:
        with self._lock:
            out = [e for s, e in self._latest.items()
                   if (s == sensor or s.startswith(sensor + ".")) and not s.endswith(_DERIVED)]
        return sorted(out, key=lambda e: e.stream)

    def sensors_table(self) -> Table:
        table = Table(title="sensors", expand=True, title_justify="left", pad_edge=False)
        for col, just in (("channel", "left"), ("value", "right"), ("unit", "left"), ("quality", "left"),
                          ("age", "right")):
            table.add_column(col, justify=just, no_wrap=True)
        now = self._now_ns()
        for s in self.agent.config.sensors:
            if s.kind == "stream":
                continue
            rows = self._channels(s.name)
            if not rows:
                table.add_row(s.name, "—", "", Text("waiting", style="dim"), "")
            for e in rows:
                p = e.payload
                q = str(e.quality)
                value = _fmt(p.get("value"))
                if p.get("error"):
                    value = p["error"][:40]
                table.add_row(e.stream, value, p.get("unit", ""), Text(q, style=QUALITY_STYLE.get(q, "")),
                              _age((now - e.ts_ns) / 1e9))
        return table

    def vibration_table(self) -> Table | None:
        streams = [s for s in self.agent.config.sensors if s.kind == "stream"]
        if not streams:
            return None
        table = Table(title="vibration", expand=True, title_justify="left", pad_edge=False)
        for col in ("sensor", "zone", "v rms mm/s", "a rms m/s²", "kurtosis", "bpfo", "bpfi", "env rms", "gap",
                    "quality", "age"):
            table.add_column(col, justify="left" if col in ("sensor", "zone", "quality") else "right",
                             no_wrap=True)
        now = self._now_ns()
        for s in streams:
            with self._lock:
                e = self._latest.get(s.name)
            if e is None:
                table.add_row(s.name, "", "", "", "", "", "", "", "", Text("waiting", style="dim"), "")
                continue
            axes = e.payload.get("features", {})

            def worst(key: str) -> Any:
                values = [f.get(key) for f in axes.values() if isinstance(f.get(key), (int, float))]
                return max(values) if values else None
            zone = e.payload.get("zone") or ""
            q = str(e.quality)
            table.add_row(s.name, Text(zone or "—", style=ZONE_STYLE.get(zone, "")), _fmt(worst("velocity_rms")),
                          _fmt(worst("rms")), _fmt(worst("kurtosis"), 3), _fmt(worst("bpfo"), 3),
                          _fmt(worst("bpfi"), 3), _fmt(worst("env_rms"), 3), str(e.payload.get("gap_before", 0)),
                          Text(q, style=QUALITY_STYLE.get(q, "")), _age((now - e.ts_ns) / 1e9))
        return table

    def machine_table(self) -> Table | None:
        with self._lock:
            states = sorted((s, e) for s, e in self._latest.items() if s.endswith(".state"))
            events = list(self._events)
        if not states and not events:
            return None
        table = Table(title="machine", expand=True, title_justify="left", pad_edge=False, show_header=False)
        table.add_column("what", no_wrap=True)
        table.add_column("value")
        for stream, e in states:
            p = e.payload
            avail = p.get("availability")
            state = p.get("state") or "?"
            line = Text(state, style=STATE_STYLE.get(state, ""))
            line.append(f"   availability {avail * 100:.1f} % over {_age(p.get('interval_s', 0))}" if avail is not None
                        else "   availability —")
            line.append(f"   running {p.get('running_s', 0):.0f} s, idle {p.get('idle_s', 0):.0f} s, "
                        f"off {p.get('off_s', 0):.0f} s")
            table.add_row(stream, line)
        now = self._now_ns()
        for e in reversed(events):
            table.add_row(f"{_age((now - e.ts_ns) / 1e9)} ago", f"{e.stream}: {describe_event(e.payload)}")
        return table

    def render(self) -> Group:
        parts: list[Any] = [self.header()]
        for part in (self.vibration_table(), self.machine_table(), self.sensors_table()):
            if part is not None:
                parts.append(part)
        return Group(*parts)

    # -- life cycle ---------------------------------------------------------------------------------------------
    def start(self) -> "LiveView":
        self.attach()
        self._live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start()
        self._swap_logging()
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                assert self._live is not None
                self._live.update(self.render())
            except Exception:  # a rendering bug must not take the agent down; try again next time
                pass

    def _swap_logging(self) -> None:
        """Log lines go through the live console (printed above the view) instead of raw stderr."""
        from rich.logging import RichHandler

        root = logging.getLogger()
        for h in list(root.handlers):
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is not None:
                rich = RichHandler(console=self.console, show_path=False, rich_tracebacks=False)
                rich.setLevel(h.level)
                root.removeHandler(h)
                root.addHandler(rich)
                self._handlers.append((h, rich))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        root = logging.getLogger()
        for original, rich in self._handlers:
            root.removeHandler(rich)
            root.addHandler(original)
        self._handlers.clear()
        if self._live is not None:
            try:
                self._live.update(self.render())
            except Exception:
                pass
            self._live.stop()
            self._live = None


__all__ = ["LiveView"]
