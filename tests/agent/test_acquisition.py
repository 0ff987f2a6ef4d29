"""The acquisition's real-time budget: a stream sensor read in its own process, the readers' scheduling and its clean
fallback without privileges, and the reader-latency figures (worst drain interval against the FIFO's slack).

Real parts: the emulated I2C bus and ADXL345 model, a real child process, SQLite on disk. No timed assertions: the
latency figures are checked against what the driver's own clock saw, not against the machine's speed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.acquisition import ProcessReader
from agent.config import parse
from agent.pipeline import Pipeline, Reader
from agent.realtime import RealtimePolicy
from tests.agent_helpers import wait
from tests.mqtt_helpers import free_port
from tests.paths import ROOT



def adxl_config(port: int, emulate: bool = True, backend: str = "emulated", **sensor: object):
    return parse({
        "agent": {"id": "acq"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "buses": {"i2c1": {"type": "i2c", "backend": backend, "baudrate": 400000}},
        "sensors": [{"name": "vib", "driver": "adxl345", "bus": "i2c1", "address": 0x53, "rate_hz": 400,
                     "block_size": 100, "watermark": 8, "window": 400, "hop": 400, **sensor}],
    }, "<test>", emulate=emulate)


def test_the_reader_runs_where_the_policy_says(tmp_path: Path) -> None:
    """By default a stream sensor on a real bus is read in a process of its own; an emulated one stays a thread
    (a child's emulated chip would not see the agent's plant); the policy can force either."""
    port = free_port()
    real = Pipeline(adxl_config(port, emulate=False, backend="real"), tmp_path / "a")
    assert isinstance(real.readers[0], ProcessReader)
    emulated = Pipeline(adxl_config(port), tmp_path / "b")
    assert type(emulated.readers[0]) is Reader
    forced = Pipeline(adxl_config(port), tmp_path / "c", realtime=RealtimePolicy(process=True))
    assert isinstance(forced.readers[0], ProcessReader)
    off = Pipeline(adxl_config(port, emulate=False, backend="real"), tmp_path / "d", realtime=RealtimePolicy.off())
    assert type(off.readers[0]) is Reader


def test_the_acquisition_key_picks_the_reader_and_bad_values_name_their_key(tmp_path: Path) -> None:
    """`acquisition` on a stream sensor: "auto" is the default rule above, "thread" and "process" force it (over
    the pipeline's policy); a wrong value, or "process" on a slow sensor, is a configuration error at its key."""
    from agent.errors import ConfigError
    from agent.pipeline import Pipeline

    port = free_port()
    assert adxl_config(port).sensors[0].acquisition == "auto"
    made = {
        "emulated, process": Pipeline(adxl_config(port, acquisition="process"), tmp_path / "a"),
        "real, thread": Pipeline(adxl_config(port, False, "real", acquisition="thread"), tmp_path / "b"),
        "real, auto": Pipeline(adxl_config(port, False, "real", acquisition="auto"), tmp_path / "c"),
        "thread over the policy": Pipeline(adxl_config(port, acquisition="thread"), tmp_path / "d",
                                           realtime=RealtimePolicy(process=True)),
    }
    assert {k: type(p.readers[0]).__name__ for k, p in made.items()} == {
        "emulated, process": "ProcessReader", "real, thread": "Reader", "real, auto": "ProcessReader",
        "thread over the policy": "Reader"}
    with pytest.raises(ConfigError) as e:
        adxl_config(port, acquisition="fork")
    assert "<test>: sensors[0].acquisition: expected one of 'auto', 'thread', 'process', got 'fork'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse({"agent": {"id": "acq"}, "sensors": [
            {"name": "t", "driver": "emulated.temperature", "acquisition": "process"}]}, "<test>", emulate=True)
    assert "<test>: sensors[0].acquisition: expected 'auto' or 'thread' for a slow sensor" in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("acquisition", ["thread", "process"])
def test_both_reader_policies_deliver_windows(tmp_path: Path, acquisition: str) -> None:
    from agent.pipeline import Pipeline

    pipeline = Pipeline(adxl_config(free_port(), acquisition=acquisition), tmp_path / "state")
    assert type(pipeline.readers[0]).__name__ == {"thread": "Reader", "process": "ProcessReader"}[acquisition]
    pipeline.start()
    try:  # a features record per 400 samples (1 s at 400 Hz); a bound on a hang, not on speed
        assert wait(lambda: pipeline.outbox.next_seq("vib") >= 2, 180), pipeline.stats.snapshot()
    finally:
        pipeline.stop(drain_s=0.5)
    assert pipeline.stats.get("processing_errors.vib") == 0 and pipeline.stats.get("samples.vib") >= 800


@pytest.mark.slow
def test_a_process_reader_delivers_blocks_restarts_a_killed_child_and_stops_cleanly(tmp_path: Path) -> None:
    agent = Pipeline(adxl_config(free_port()), tmp_path / "state", realtime=RealtimePolicy(process=True))
    reader = agent.readers[0]
    assert isinstance(reader, ProcessReader)
    agent.start()
    try:
        assert wait(lambda: agent.stats.get("samples.vib") >= 800, 120), agent.stats.snapshot()
        assert str(agent.stats.get("reader_scheduling.vib", "")).startswith("process, ")
        assert agent.stats.get("reader_slack_ms.vib") == pytest.approx(32 / 400 * 1e3)
        assert agent.stats.get("reader_latency_ms.vib") > 0
        # windows are computed from what the child delivered: a features record per 400 samples
        assert wait(lambda: agent.outbox.depth >= 1, 60)
        first = reader._proc
        os.kill(first.pid, signal.SIGKILL)  # the acquisition process dies: counted, started again
        assert wait(lambda: agent.stats.get("reader_errors.vib") >= 1, 60)
        before = agent.stats.get("samples.vib")
        assert wait(lambda: agent.stats.get("samples.vib") >= before + 400, 120)
        assert reader._proc is not first and reader._proc.is_alive()
    finally:
        agent.stop(drain_s=0.5)
    assert not reader.is_alive() and not reader._proc.is_alive()


def test_the_thread_reader_reports_its_worst_drain_interval_against_the_fifo_slack(tmp_path: Path) -> None:
    agent = Pipeline(adxl_config(free_port()), tmp_path / "state")
    agent.start()
    try:
        assert wait(lambda: agent.stats.get("samples.vib") >= 400, 60)
    finally:
        agent.stop(drain_s=0.5)
    src = agent.readers[0].source
    assert agent.stats.get("reader_slack_ms.vib") == pytest.approx(80.0)  # 32 entries at 400 Hz
    # the gauge is the driver's own figure, and a drain interval is at least the watermark's 8 samples
    assert agent.stats.get("reader_latency_ms.vib") == pytest.approx(src.worst_drain_interval_s * 1e3, abs=0.01)
    assert src.worst_drain_interval_s >= 8 / 400 * 0.9
    assert agent.stats.get("reader_scheduling.vib") == agent.readers[0].scheduling


def test_a_late_drain_shows_in_the_worst_interval_and_as_lost_samples() -> None:
    """The figure means what it says: a reader away longer than the FIFO's slack loses samples."""
    from hal.emulated.i2c import EmulatedI2CBus
    from hal.sources import HalContext, open_source
    from tests.hal.conftest import FakeClock
    clock = FakeClock()
    ctx = HalContext(emulate=True, buses={"i2c1": {"type": "i2c", "backend": "emulated", "baudrate": 400_000}})
    ctx.shared("i2c:i2c1", lambda: EmulatedI2CBus("i2c1", clock=clock, baudrate=400_000))
    s = open_source("adxl345", "vib", {"rate_hz": 800, "block_size": 64, "watermark": 16}, ctx, bus="i2c1")
    s.open()
    clock.advance(16 / 800)
    assert s.drain() >= 16 and s.worst_drain_interval_s == pytest.approx(16 / 800, abs=1e-9)
    assert s.counters["lost_samples"] == 0 and s.buffer_slack_s == pytest.approx(0.04)
    clock.advance(0.1)  # away 100 ms: more than the 40 ms the FIFO holds
    s.drain()
    assert s.worst_drain_interval_s == pytest.approx(0.1) and s.counters["lost_samples"] > 0
    ctx.close()


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root to drop to an unprivileged user")
def test_without_privileges_the_reader_falls_back_to_default_scheduling_and_says_why() -> None:
    code = ("from agent.realtime import RealtimePolicy, promote_reader, thread_policy\n"
            "import threading\n"
            "print(promote_reader(RealtimePolicy()))\n"
            "print(thread_policy(threading.get_native_id()))\n")
    # the unprivileged user may not be able to read the checkout (a clone under a 0700 directory): give it a
    # world-readable copy of the two modules it needs (agent.realtime imports only the standard library)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / "agent"
        pkg.mkdir()
        for name in ("__init__.py", "realtime.py"):
            shutil.copy(ROOT / "agent" / name, pkg / name)
        for p in (Path(tmp), pkg, *pkg.iterdir()):
            p.chmod(0o755 if p.is_dir() else 0o644)
        r = subprocess.run([SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                            os.path.realpath(sys.executable), "-I", "-c", f"import sys; sys.path.insert(0, {tmp!r})\n"
                            + code], capture_output=True, text=True, timeout=120, cwd=tmp)
    assert r.returncode == 0, r.stderr
    applied, now = r.stdout.splitlines()
    assert applied.startswith("default (SCHED_FIFO: ") and "nice -10: " in applied, applied
    assert now == f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"  # unchanged: what it inherited from us


def test_the_policy_off_changes_nothing() -> None:
    from agent.realtime import promote_reader, restore_process, tune_process
    before = sys.getswitchinterval()
    assert tune_process(RealtimePolicy.off()) is None and sys.getswitchinterval() == before
    assert promote_reader(RealtimePolicy.off()) == "default"
    previous = tune_process(RealtimePolicy())
    try:
        assert sys.getswitchinterval() == pytest.approx(0.001)
    finally:
        restore_process(previous)
    assert sys.getswitchinterval() == before
