"""A stream sensor read in its own process: the FIFO reader gets its own interpreter, so no thread of the agent
(JSON, SQLite, MQTT, other sensors, an emulated Modbus server) can hold a GIL it waits for.

`ProcessReader` has the `Reader` interface the pipeline uses (`sensor`, `source`, `scheduling`, `start`, `join`,
`is_alive`). It starts a child process (multiprocessing "spawn": safe beside the agent's threads) that builds the
driver from the sensor's configuration, raises its own scheduling priority (agent.realtime), and does nothing but
`read_block` and hand each block, with the driver's counters, to a `multiprocessing.Queue` (its feeder thread
buffers, so a slow agent never blocks a drain). A thread in the agent takes the blocks from that queue and delivers
them to the processing queue exactly as a `Reader` does, with the same counters (`samples.<sensor>`,
`reader_errors.<sensor>`, `reader_latency_ms.<sensor>`...). A child that dies is counted and started again.

Limits: the child opens the bus itself. On real buses that is what the kernel serialises anyway (each SMBus call is
one transaction); an emulated bus in the child has a plant of its own, which scenarios acting on the agent's plant
do not reach - so emulated runs with scenarios keep the thread reader. This module must not touch processing,
the outbox or the uplink.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
import time
from typing import Any

from agent.realtime import RealtimePolicy, promote_reader
from hal.types import Block

log = logging.getLogger("edge_agent.acquisition")


def _snapshot(source: Any) -> dict[str, Any]:
    dev = getattr(source, "dev", None)
    chip = getattr(getattr(dev, "bus", None), "chips", {}).get(getattr(dev, "address", None))
    return {"counters": dict(getattr(source, "counters", {}) or {}),
            "discarded": getattr(chip, "discarded", None),  # an emulated chip's own count of lost samples
            "worst_drain_interval_s": getattr(source, "worst_drain_interval_s", None),
            "worst_wake_late_s": getattr(source, "worst_wake_late_s", None),
            "last_error": getattr(source, "last_error", None)}


def _child(sensor: Any, emulate: bool, buses: Any, policy: RealtimePolicy, out: Any, stop: Any) -> None:
    """The acquisition process: open the sensor, read blocks until told to stop, close it."""
    from hal.sources import HalContext, open_source

    scheduling = promote_reader(policy)
    out.put(("scheduling", scheduling))
    context = HalContext(emulate=emulate, buses=buses)
    source = open_source(sensor.driver, sensor.name, sensor.options, context, bus=sensor.bus)
    try:
        source.open()
        while not stop.is_set():
            block = source.read_block(timeout=0.5)  # type: ignore[union-attr]
            if block is not None:
                out.put(("block", block, _snapshot(source)))
    except Exception as e:  # reported to the agent, which counts it and starts the child again
        out.put(("error", f"{type(e).__name__}: {e}", _snapshot(source)))
    finally:
        try:
            source.close()
        finally:
            context.close()
            out.put(("done", None, _snapshot(source)))


class _SourceView:
    """What the agent sees of the driver in the child: its static attributes and its last reported counters."""

    kind = "stream"

    def __init__(self, probe: Any) -> None:
        self.name = probe.name
        self.rate_hz = probe.rate_hz
        slack = getattr(probe, "buffer_slack_s", None)
        if slack is not None:
            self.buffer_slack_s = slack
        self.counters: dict[str, Any] = dict(getattr(probe, "counters", {}) or {})
        self.worst_drain_interval_s: float | None = None
        self.worst_wake_late_s: float | None = None
        self.last_error: str | None = None
        self.discarded: int | None = None  # emulated chips only: what the chip in the child really lost

    def update(self, snap: dict[str, Any]) -> None:
        self.counters = snap["counters"]
        self.worst_drain_interval_s = snap["worst_drain_interval_s"]
        self.worst_wake_late_s = snap["worst_wake_late_s"]
        self.last_error = snap["last_error"]
        self.discarded = snap.get("discarded")


class ProcessReader(threading.Thread):
    """Reads one stream sensor in a child process; delivers its blocks like a `Reader`."""

    def __init__(self, sensor: Any, context: Any, deliver: Any, stats: Any, stop: threading.Event,
                 realtime: RealtimePolicy | None = None) -> None:
        super().__init__(name=f"reader-{sensor.name}", daemon=True)
        from hal.sources import open_source

        self.sensor = sensor
        self.context = context
        self.deliver = deliver  # callable(Block): the pipeline's hand-over to processing
        self.stats = stats
        self.stop_event = stop
        self.realtime = realtime or RealtimePolicy()
        self.scheduling = "default"
        probe = open_source(sensor.driver, sensor.name, sensor.options, context, bus=sensor.bus)  # validates
        self.source = _SourceView(probe)
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None

    def _spawn(self) -> tuple[Any, Any]:
        out, stop = self._ctx.Queue(), self._ctx.Event()
        self._proc = self._ctx.Process(target=_child, name=f"edge-agent acquisition {self.sensor.name}",
                                       args=(self.sensor, self.context.emulate, dict(self.context.buses),
                                             self.realtime, out, stop), daemon=True)
        self._proc.start()
        return out, stop

    def _publish(self, snap: dict[str, Any]) -> None:
        self.source.update(snap)
        name = self.sensor.name
        if self.source.worst_drain_interval_s is not None:
            self.stats.set(f"reader_latency_ms.{name}", round(self.source.worst_drain_interval_s * 1e3, 2))
            self.stats.set(f"reader_slack_ms.{name}", round(self.source.buffer_slack_s * 1e3, 2))

    def run(self) -> None:
        stage = f"reader.{self.sensor.name}"
        backoff = 1.0
        while not self.stop_event.is_set():
            out, stop = self._spawn()
            done = False
            while not done:
                self.stats.progress(stage)
                if self.stop_event.is_set():
                    stop.set()
                try:
                    msg = out.get(timeout=0.5)
                except queue.Empty:
                    if not self._proc.is_alive():  # died without a word (killed, crashed interpreter)
                        self.stats.inc(f"reader_errors.{self.sensor.name}")
                        log.error("sensor %s: acquisition process exited with %s", self.sensor.name,
                                  self._proc.exitcode)
                        break
                    continue
                kind = msg[0]
                if kind == "scheduling":
                    self.scheduling = msg[1]
                    self.stats.set(f"reader_scheduling.{self.sensor.name}", f"process, {msg[1]}")
                    log.info("sensor %s: read in process %d, scheduled %s", self.sensor.name, self._proc.pid,
                             msg[1])
                elif kind == "block":
                    block: Block = msg[1]
                    self.stats.inc(f"samples.{self.sensor.name}", len(block))
                    self.deliver(block)
                    self._publish(msg[2])
                    backoff = 1.0
                elif kind == "error":
                    self.stats.inc(f"reader_errors.{self.sensor.name}")
                    log.error("sensor %s (%s): %s; retrying in %.0f s", self.sensor.name, self.sensor.driver,
                              msg[1], backoff)
                    self._publish(msg[2])
                elif kind == "done":
                    self._publish(msg[2])
                    done = True
            stop.set()
            self._proc.join(5.0)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(2.0)
            if not self.stop_event.is_set():  # the child ended on its own: start it again after a back-off
                deadline = time.monotonic() + backoff
                while not self.stop_event.is_set() and time.monotonic() < deadline:
                    self.stop_event.wait(min(1.0, max(0.0, deadline - time.monotonic())))
                    self.stats.progress(stage)
                backoff = min(backoff * 2, 60.0)


__all__ = ["ProcessReader"]
