"""Self-monitoring: `health` records through the outbox to the broker, and the platform probes on a Pi's sysfs."""

from __future__ import annotations

import os
from pathlib import Path

from agent.health import decode_throttled, device_bytes_written, soc_temperature_c, throttling
from agent.service import Service
from tests.agent_helpers import run_agent
from tests.agent.service.helpers import service_config, wait


def test_health_records_reach_the_broker(broker, subscriber_factory, tmp_path: Path) -> None:
    sub = subscriber_factory(broker.port, "edge/svc/health/#")
    agent = run_agent(service_config(broker.port), tmp_path / "state")
    service = Service(agent, environ={}, health_interval_s=0.5)
    try:
        service.ready()  # the first health record goes out at once
        assert wait(lambda: agent.stats.get("link") == "up")
        while not sub.wait_for(lambda s: len(s.snapshot()) >= 2, 0.2):
            service.tick()
    finally:
        service.stopping()
        agent.stop(drain_s=1.0)
    msgs = sub.snapshot()
    assert {m.topic for m in msgs} == {"edge/svc/health/health"}
    body = msgs[-1].json()
    assert body["agent"] == "svc" and body["stream"] == "health" and body["seq"] >= 1
    assert body["cpu_pct"] is not None and body["cpu_pct"] >= 0
    assert body["rss_mb"] > 10  # a Python process with NumPy
    assert {"outbox", "uplink", "processing", "reader.vib", "reader.temp"} <= set(body["stage_lag_s"])
    assert all(v >= 0 for v in body["stage_lag_s"].values())
    assert body["queues"].keys() >= {"processing", "outbox"}
    assert isinstance(body["outbox_depth"], int) and body["reconnects"] >= 1 and body["link"] == "up"
    assert body["drops"] == {}
    for key in ("publish_latency_ms", "bytes_written", "device_bytes_written", "soc_temp_c", "throttling",
                "outbox_oldest_age_s"):
        assert key in body  # null where this machine does not expose it


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_pi_probes_read_a_pi_sysfs(tmp_path: Path) -> None:
    """A copy of what a Raspberry Pi 4 exposes (values as the kernel prints them)."""
    _write(tmp_path, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    _write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "61834\n")
    _write(tmp_path, "sys/devices/platform/soc/soc:firmware/get_throttled", "50005\n")
    assert soc_temperature_c(tmp_path) == 61.8
    th = throttling(tmp_path)
    assert th is not None and th["raw"] == "0x50005"
    assert th["under_voltage"] and th["throttled"] and th["under_voltage_occurred"] and th["throttling_occurred"]
    assert not th["arm_frequency_capped"] and not th["soft_temperature_limit_occurred"]


def test_pi5_under_voltage_from_hwmon_and_absent_probes(tmp_path: Path) -> None:
    _write(tmp_path, "sys/class/hwmon/hwmon1/name", "rpi_volt\n")
    _write(tmp_path, "sys/class/hwmon/hwmon1/in0_lcrit_alarm", "1\n")
    assert throttling(tmp_path) == {"raw": None, "under_voltage": True}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert soc_temperature_c(empty) is None and throttling(empty) is None


def test_decode_throttled_bits() -> None:
    assert not any(decode_throttled(0).values())
    flags = decode_throttled(0x80008)
    assert [k for k, v in flags.items() if v] == ["soft_temperature_limit", "soft_temperature_limit_occurred"]


def test_device_bytes_written_reads_the_block_device_of_a_path(tmp_path: Path) -> None:
    st = os.stat(tmp_path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    _write(tmp_path / "root", f"sys/dev/block/{major}:{minor}/stat",
           "   1234 0 5678 90 4321 0 2000 300 0 400 500\n")
    assert device_bytes_written(tmp_path, tmp_path / "root") == 2000 * 512
    assert device_bytes_written(tmp_path / "missing", tmp_path / "root") is None
