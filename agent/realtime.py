"""The real-time budget of acquisition: how the threads that drain hardware FIFOs get the CPU (and the GIL) in time.

A stream reader (an ADXL345's 32-entry FIFO holds 40 ms at 800 Hz) must come back to its chip before the buffer
fills, whatever else the process does (JSON, SQLite, MQTT, Numba dispatch) and whatever else the machine runs. Two
latencies add up when a reader wakes: the kernel must schedule its thread (other processes compete for the cores),
and the thread must then take the GIL from whichever Python thread holds it (by default a holder is asked to let go
only after `sys.getswitchinterval()` = 5 ms). This module owns the two knobs that shorten them, measured in
bench/bench_acquisition.py:

* `tune_process`: a shorter GIL switch interval (1 ms) for the whole process while stream sensors run, so a woken
  reader waits at most about a millisecond for a busy Python thread to let go;
* `RealtimePolicy.process`: each stream sensor read in a process of its own (agent.acquisition), so no other
  Python thread can hold the GIL its reader waits for;
* `promote_reader`: called by a stream reader on its own thread: SCHED_FIFO (when the process may: root or
  CAP_SYS_NICE, and not under systemd's RestrictRealtime=), else a negative per-thread nice (Linux keeps a nice value
  per thread; lowering it needs CAP_SYS_NICE or RLIMIT_NICE), else nothing. It never fails: it says what it got.

It must not touch drivers, queues or records: it changes only how the operating system and the interpreter schedule
the threads it is asked about.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass

log = logging.getLogger("edge_agent.realtime")


@dataclass(frozen=True)
class RealtimePolicy:
    """What the pipeline asks for its stream readers. `RealtimePolicy.off()` leaves everything as Python has it."""

    switch_interval_s: float | None = 0.001  # None: keep Python's default (5 ms)
    fifo_priority: int | None = 10  # SCHED_FIFO priority for stream readers (1..99); None: do not try
    nice: int | None = -10  # per-thread nice tried when SCHED_FIFO is refused; None: do not try
    # read each stream sensor in its own process (agent.acquisition): no GIL shared with the rest of the agent.
    # None: on real buses only (an emulated sensor in a child process would not see the agent's plant and scenario)
    process: bool | None = None

    @classmethod
    def off(cls) -> "RealtimePolicy":
        return cls(switch_interval_s=None, fifo_priority=None, nice=None, process=False)


def tune_process(policy: RealtimePolicy) -> float | None:
    """Apply the process-wide part of `policy`; returns the previous switch interval (for `restore_process`), or
    None when nothing was changed."""
    if policy.switch_interval_s is None:
        return None
    previous = sys.getswitchinterval()
    if policy.switch_interval_s < previous:
        sys.setswitchinterval(policy.switch_interval_s)
        return previous
    return None


def restore_process(previous: float | None) -> None:
    if previous is not None:
        sys.setswitchinterval(previous)


def promote_reader(policy: RealtimePolicy, tid: int | None = None) -> str:
    """Raise the scheduling priority of thread `tid` (default: the calling thread) as far as the process may.

    Returns what was applied, e.g. "SCHED_FIFO 10", "nice -10", or "default (...why...)"; never raises."""
    tid = threading.get_native_id() if tid is None else tid
    refused: list[str] = []
    if policy.fifo_priority is not None and hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(policy.fifo_priority))
            return f"SCHED_FIFO {policy.fifo_priority}"
        except OSError as e:  # EPERM: no CAP_SYS_NICE, or RestrictRealtime= under systemd
            refused.append(f"SCHED_FIFO: {e.strerror or e}")
    if policy.nice is not None and hasattr(os, "setpriority"):
        try:
            current = os.getpriority(os.PRIO_PROCESS, tid)
            if policy.nice < current:
                os.setpriority(os.PRIO_PROCESS, tid, policy.nice)
                return f"nice {policy.nice}"
            return f"nice {current}"
        except OSError as e:  # EPERM/EACCES: lowering nice needs CAP_SYS_NICE or RLIMIT_NICE
            refused.append(f"nice {policy.nice}: {e.strerror or e}")
    if not refused:
        return "default"
    return f"default ({'; '.join(refused)})"


def thread_policy(tid: int) -> str:
    """The scheduling of thread `tid` as the kernel reports it (for status and the benchmark)."""
    try:
        pol = os.sched_getscheduler(tid)
        if pol in (os.SCHED_FIFO, os.SCHED_RR):
            name = "SCHED_FIFO" if pol == os.SCHED_FIFO else "SCHED_RR"
            return f"{name} {os.sched_getparam(tid).sched_priority}"
        return f"nice {os.getpriority(os.PRIO_PROCESS, tid)}"
    except (OSError, AttributeError):
        return "unknown"


__all__ = ["RealtimePolicy", "tune_process", "restore_process", "promote_reader", "thread_policy"]
