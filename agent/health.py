"""Self-monitoring: the agent's own vital signs, published periodically as `health` records and shown by `doctor`.

Owns the platform probes (SoC temperature, Raspberry Pi throttling and under-voltage flags, bytes written to the
storage device) and the `HealthMonitor` that turns the agent's stats into one `health` record: CPU %, RSS, per-stage
loop lag, queue depths, outbox depth and oldest age, publish latency, reconnects, drops, bytes written, SoC
temperature and throttling flags.

Reads only: /proc/self, /sys (read-only, so `ProtectKernelTunables=` does not get in the way) and the agent's public
attributes. Never raises for a probe the platform lacks: the value is simply absent (None).
Every probe takes a `root` (default "/") so the same code runs against a copy of a Pi's sysfs in tests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hal.types import now_ns

HEALTH_STREAM = "health"

# Raspberry Pi firmware "get_throttled" bits (vcgencmd get_throttled; the same word the kernel exposes in sysfs).
THROTTLE_BITS = {
    0: "under_voltage",
    1: "arm_frequency_capped",
    2: "throttled",
    3: "soft_temperature_limit",
    16: "under_voltage_occurred",
    17: "arm_frequency_capping_occurred",
    18: "throttling_occurred",
    19: "soft_temperature_limit_occurred",
}
_THROTTLED_PATHS = ("sys/devices/platform/soc/soc:firmware/get_throttled",
                    "sys/devices/platform/soc:firmware/get_throttled")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def soc_temperature_c(root: str | os.PathLike[str] = "/") -> float | None:
    """The SoC temperature in °C (thermal zone of type cpu-thermal/soc, else zone 0), or None."""
    base = Path(root) / "sys/class/thermal"
    try:
        zones = sorted(p for p in base.iterdir() if p.name.startswith("thermal_zone"))
    except OSError:
        return None
    preferred = [z for z in zones if (_read(z / "type") or "").lower() in ("cpu-thermal", "soc-thermal", "cpu_thermal",
                                                                            "x86_pkg_temp")]
    for zone in preferred + zones:
        raw = _read(zone / "temp")
        if raw is not None:
            try:
                return round(int(raw) / 1000.0, 1)
            except ValueError:
                continue
    return None


def decode_throttled(word: int) -> dict[str, bool]:
    return {name: bool(word >> bit & 1) for bit, name in THROTTLE_BITS.items()}


def throttling(root: str | os.PathLike[str] = "/") -> dict[str, Any] | None:
    """Raspberry Pi throttling flags, or None where the platform does not expose them.

    Source: the firmware's get_throttled word in sysfs; else the `rpi_volt` hwmon under-voltage alarm (Pi 4/5).
    """
    for rel in _THROTTLED_PATHS:
        raw = _read(Path(root) / rel)
        if raw is not None:
            try:
                word = int(raw, 16)
            except ValueError:
                continue
            return {"raw": f"0x{word:x}", **decode_throttled(word)}
    hwmon = Path(root) / "sys/class/hwmon"
    try:
        entries = sorted(hwmon.iterdir())
    except OSError:
        return None
    for h in entries:
        if _read(h / "name") == "rpi_volt":
            alarm = _read(h / "in0_lcrit_alarm")
            if alarm is not None:
                return {"raw": None, "under_voltage": alarm == "1"}
    return None


def device_bytes_written(path: str | os.PathLike[str], root: str | os.PathLike[str] = "/") -> int | None:
    """Bytes written since boot to the block device holding `path` (sectors written × 512), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    stat = _read(Path(root) / f"sys/dev/block/{major}:{minor}/stat")
    if stat is None:
        return None
    fields = stat.split()
    try:
        return int(fields[6]) * 512
    except (IndexError, ValueError):
        return None


def process_write_bytes(root: str | os.PathLike[str] = "/") -> int | None:
    """Bytes this process caused to be written to storage (/proc/self/io write_bytes), or None."""
    raw = _read(Path(root) / "proc/self/io")
    if raw is None:
        return None
    for line in raw.splitlines():
        key, _, value = line.partition(":")
        if key == "write_bytes":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def rss_bytes(root: str | os.PathLike[str] = "/") -> int | None:
    raw = _read(Path(root) / "proc/self/statm")
    if raw is None:
        return None
    try:
        return int(raw.split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (IndexError, ValueError, OSError):
        return None


class CpuMeter:
    """CPU use of this process in % of one core between two calls (100 % = one core busy)."""

    def __init__(self) -> None:
        self._last = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        t = os.times()
        return time.monotonic(), t.user + t.system

    def percent(self) -> float | None:
        now = self._now()
        (w0, c0), (w1, c1) = self._last, now
        self._last = now
        if w1 - w0 <= 0:
            return None
        return round(100.0 * (c1 - c0) / (w1 - w0), 1)


def stage_ages(stats: Any) -> dict[str, float]:
    """Seconds since each stage last went round its loop ("loop lag")."""
    return {k: round(float(v), 3) for k, v in sorted(stats.progress_ages().items())}


def live_stage_ages(agent: Any) -> dict[str, float]:
    """`stage_ages` without the readers of a configuration a reload replaced (their last progress stays behind)."""
    ages = stage_ages(agent.stats)
    readers = getattr(agent, "readers", None)
    if readers is None:
        return ages
    current = {f"reader.{getattr(getattr(r, 'sensor', None), 'name', '')}" for r in readers}
    return {k: v for k, v in ages.items() if not k.startswith("reader.") or k in current}


def counters(stats: Any) -> dict[str, Any]:
    snap = stats.snapshot()
    return snap if isinstance(snap, dict) else {}


def drops(snapshot: dict[str, Any]) -> dict[str, int]:
    """Every counted loss: full queues, outbox policy drops, reader drops (by counter name)."""
    out: dict[str, int] = {}
    for k, v in snapshot.items():
        if isinstance(v, int) and not isinstance(v, bool) and v and (
                k.startswith("dropped.") or "dropped" in k or k.endswith("queue_full") or k.startswith("outbox_lost")):
            out[k] = v
    return dict(sorted(out.items()))


def queue_depths(agent: Any) -> dict[str, int]:
    """Depths of the bounded queues between stages."""
    return dict(agent.queue_depths())


@dataclass
class OutboxHead:
    depth: int
    oldest_ts_ns: int | None
    file_bytes: int | None


class HealthMonitor:
    """Builds `health` records from the agent's stats and the platform probes.

    `sample(outbox_head)` returns the payload; the caller (the service) emits it through the outbox like any other
    record, on stream `health`.
    """

    def __init__(self, agent: Any, *, root: str | os.PathLike[str] = "/") -> None:
        self.agent = agent
        self.root = root
        self.cpu = CpuMeter()
        self._io0 = process_write_bytes(root)
        state_dir = getattr(agent, "state_dir", None)
        self._dev_path = str(state_dir) if state_dir else "/"
        self._dev0 = device_bytes_written(self._dev_path, root)

    def sample(self, head: OutboxHead | None = None) -> dict[str, Any]:
        stats = self.agent.stats
        snap = counters(stats)
        t = now_ns()
        payload: dict[str, Any] = {
            "uptime_s": round((t - getattr(self.agent, "boot_ns", t)) / 1e9, 1),
            "cpu_pct": self.cpu.percent(),
            "rss_mb": None,
            "stage_lag_s": live_stage_ages(self.agent),
            "queues": queue_depths(self.agent),
            "outbox_depth": head.depth if head else int(getattr(self.agent.outbox, "depth", 0)),
            "outbox_oldest_age_s": (round((t - head.oldest_ts_ns) / 1e9, 1)
                                    if head and head.oldest_ts_ns is not None else None),
            "outbox_bytes": head.file_bytes if head else None,
            "link": snap.get("link", "down"),
            "publish_latency_ms": snap.get("uplink_publish_latency_ms"),
            "published": snap.get("uplink_published", 0),
            "acked": snap.get("uplink_acked", 0),
            "reconnects": snap.get("uplink_connects", 0),
            "disconnects": snap.get("uplink_disconnects", 0),
            "drops": drops(snap),
            "bytes_written": None,
            "device_bytes_written": None,
            "soc_temp_c": soc_temperature_c(self.root),
            "throttling": throttling(self.root),
        }
        rss = rss_bytes(self.root)
        if rss is not None:
            payload["rss_mb"] = round(rss / 1e6, 1)
        io = process_write_bytes(self.root)
        if io is not None and self._io0 is not None:
            payload["bytes_written"] = io - self._io0
        dev = device_bytes_written(self._dev_path, self.root)
        if dev is not None and self._dev0 is not None:
            payload["device_bytes_written"] = dev - self._dev0
        return payload
