"""Per-sensor processing: the records each kind of sensor produces, driven by explicit blocks, readings and
ticks (no clocks, no threads)."""

import json
import threading
import math

import numpy as np
import pytest

from agent.config import SensorConfig
from agent.errors import ConfigError
from agent import processing
from agent.processing import ValueBoard, make_processor
from agent.records import payload_json
from agent.signal import bearings
from hal.types import Block, Quality, Reading

NS = 1_000_000_000
T0 = 1_800_000_000 * NS  # a round wall-clock second


def stream_sensor(features=None, window=1024, hop=0, name="spindle"):
    return SensorConfig(name=name, driver="emulated.vibration", kind="stream", options={"rate_hz": 3200.0},
                        window=window, hop=hop or window, features=features or {}, path="sensors[0]")


def slow_sensor(features=None, name="temp"):
    return SensorConfig(name=name, driver="emulated.temperature", kind="slow", options={},
                        features=features or {}, path="sensors[1]")


def blocks(x, rate=3200.0, size=256, axes=("x",), t0=T0, unit="m/s2"):
    for i in range(0, len(x), size):
        yield Block("spindle", t0 + int(round(i * NS / rate)), rate, x[i:i + size], unit, Quality.GOOD, 0, axes)


def run_stream(proc, x, **kw):
    out = []
    for b in blocks(x, **kw):
        out.extend(proc.on_block(b))
    return out


def test_stream_sensor_emits_one_features_record_per_window_with_rms_and_peak_per_axis():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, size=(4096, 3)) * [1.0, 2.0, 0.5]
    proc = make_processor(stream_sensor({"bands": [[0, 200], [200, 1600]], "iso": "group2_rigid"}))
    out = run_stream(proc, x, axes=("x", "y", "z"))
    features = [e for e in out if e.kind == "features"]
    assert len(features) == 4 and {e.stream for e in features} == {"spindle"}
    assert {e.stream for e in out if e.kind != "features"} <= {"spindle.events"}  # zone changes, if any
    out = features
    p = out[0].payload
    assert p["n"] == 1024 and p["rate_hz"] == 3200.0 and p["unit"] == "m/s2"
    assert p["bands_hz"] == [[0.0, 200.0], [200.0, 1600.0]]
    w = x[:1024, 1]
    f = p["features"]["y"]
    assert f["rms"] == pytest.approx(np.std(w), rel=1e-5)  # payload floats carry 6 significant digits
    assert f["peak"] == pytest.approx(np.max(np.abs(w - w.mean())), rel=1e-5)
    assert sum(f["bands"]) == pytest.approx(np.var(w), rel=1e-5)
    assert f["zone"] in ("A", "B", "C", "D") and p["zone"] == max(p["features"][a]["zone"] for a in "xyz")
    assert out[1].ts_ns == T0 + 1024 * NS // 3200
    json.loads(payload_json(p))  # JSON-serialisable


@pytest.fixture
def simulate():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parent / "signal" / "signal_simulate.py"
    spec = importlib.util.spec_from_file_location("signal_simulate_for_processing", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bearing_features_use_the_tachometer_reading(simulate):
    rate, n, shaft_rpm = 12000.0, 8192, 1797.0
    bpfo = bearings.preset("6205").orders()["bpfo"] * shaft_rpm / 60
    x = simulate.bearing_fault(rate, n, shaft_rpm / 60, bpfo, seed=3)
    board = ValueBoard()
    tacho = make_processor(slow_sensor(name="shaft_speed"), board)
    tacho.on_reading(Reading("shaft_speed", T0, shaft_rpm, "rpm"))
    sensor = stream_sensor({"bearing": "6205", "tachometer": "shaft_speed",
                            "envelope": {"band": [2000, 4000]}}, window=n)
    out = run_stream(make_processor(sensor, board), x, rate=rate)
    assert len(out) == 1
    p = out[0].payload
    assert p["shaft_hz"] == pytest.approx(29.95)
    assert p["fault_hz"]["bpfo"] == pytest.approx(bpfo, rel=1e-4)
    f = p["features"]["x"]
    assert abs(f["env_peak_hz"] - bpfo) <= rate / n
    assert f["bpfo"] > 3 * f["bpfi"]
    # without a fresh tachometer reading there is no shaft speed, hence no defect amplitudes
    stale = run_stream(make_processor(sensor, board), x, rate=rate, t0=T0 + 60 * NS)
    assert "shaft_hz" not in stale[0].payload and "fault_hz" not in stale[0].payload
    assert math.isnan(stale[0].payload["features"]["x"]["bpfo"])  # sent as null


def test_stream_state_and_anomaly_events_and_state_report():
    rate, window = 3200.0, 320
    rng = np.random.default_rng(1)
    levels = [0.01] * 20 + [1.0] * 40 + [5.0] * 40  # off, idle, running (RMS in m/s²), 0.1 s windows
    x = np.concatenate([rng.normal(0, lv, window) for lv in levels])
    sensor = stream_sensor({"state": {"off_below": 0.1, "running_above": 3.0, "report_s": 10},
                            "anomaly": {"warmup": 10, "z": 6, "features": ["rms"]}}, window=window)
    proc = make_processor(sensor)
    proc.tick(T0)
    out = run_stream(proc, x, rate=rate)
    events = [e for e in out if e.kind == "event"]
    assert {e.stream for e in events} == {"spindle.events"}
    states = [(e.payload["state"], (e.ts_ns - T0) / NS) for e in events if e.payload["event"] == "state"]
    assert states == [("off", 0.0), ("idle", 2.0), ("running", 6.0)]
    anomalies = [e.payload for e in events if e.payload["event"] == "anomaly"]
    assert anomalies and anomalies[0]["feature"] == "x.rms"  # the first level change after warm-up
    report = proc.tick(T0 + 10 * NS)
    assert [e.stream for e in report] == ["spindle.state"] and report[0].kind == "features"
    r = report[0].payload
    assert (r["off_s"], r["idle_s"]) == (2.0, 4.0) and r["running_s"] == pytest.approx(3.9)
    assert r["availability"] == pytest.approx(3.9 / 9.9, rel=1e-5)


def test_invalid_features_raise_config_error_with_the_key_path():
    with pytest.raises(ConfigError, match=r"sensors\[0\]\.features\.peaks"):
        make_processor(stream_sensor({"peaks": -1}))
    with pytest.raises(ConfigError, match=r"sensors\[1\]\.features\.rollover"):
        make_processor(slow_sensor({"rollover": "big"}))


def test_slow_sensor_without_features_publishes_every_reading():
    proc = make_processor(slow_sensor())
    out = proc.on_reading(Reading("temp", T0, np.float64(40.5), "degC"))
    assert [(e.kind, e.stream, e.payload) for e in out] == [("reading", "temp", {"value": 40.5, "unit": "degC"})]
    assert type(out[0].payload["value"]) is float
    bad = proc.on_reading(Reading.bad("temp", "no answer", "degC", ts_ns=T0 + NS))
    assert bad[0].quality == Quality.BAD and bad[0].payload == {"value": None, "unit": "degC", "error": "no answer"}


def feed(proc, values, t0=T0, step_s=1.0, channel="temp", unit="degC"):
    out = []
    for i, v in enumerate(values):
        ts = t0 + int(i * step_s * NS)
        out.extend(proc.on_reading(Reading(channel, ts, v, unit)))
        for k in range(1, int(2 * step_s)):  # the pipeline ticks every 0.5 s
            out.extend(proc.tick(ts + k * NS // 2))
    return out


def test_report_by_exception_with_heartbeat_from_tick():
    proc = make_processor(slow_sensor({"deadband": 0.5, "heartbeat_s": 10}))
    values = [20.0, 20.1, 20.2, 20.6, 20.6] + [20.6] * 20
    out = [e for e in feed(proc, values, step_s=3.0) if e.kind == "reading"]
    # 20.0 at 0 s, 20.6 at 9 s (moved 0.6), then heartbeats: when 10 s have passed since the last published
    # reading, the tick publishes the latest one (taken 1 s earlier)
    assert [((e.ts_ns - T0) / NS, e.payload["value"]) for e in out] == [
        (0.0, 20.0), (9.0, 20.6), (18.0, 20.6), (27.0, 20.6), (36.0, 20.6), (45.0, 20.6), (54.0, 20.6),
        (63.0, 20.6), (72.0, 20.6)]


def test_heartbeat_republishes_a_held_back_reading_at_tick():
    proc = make_processor(slow_sensor({"deadband": 1.0, "heartbeat_s": 5}))
    assert proc.on_reading(Reading("temp", T0, 20.0))
    assert proc.on_reading(Reading("temp", T0 + 2 * NS, 20.3)) == []
    assert proc.tick(T0 + 4 * NS) == []
    out = proc.tick(T0 + 5 * NS)
    assert [(e.ts_ns, e.payload["value"]) for e in out] == [(T0 + 2 * NS, 20.3)]
    assert proc.tick(T0 + 6 * NS) == []


def test_counter_readings_carry_deltas_across_rollover_and_interval_totals():
    proc = make_processor(slow_sensor({"counter": True, "rollover": 65536, "aggregate_s": 10}, name="parts"))
    out = feed(proc, [65530, 65533, 1, 4, 4, 9, 10, 10, 12, 20, 21, 30], channel="parts", unit="")
    readings = [e.payload for e in out if e.kind == "reading"]
    assert readings[0] == {"value": 65530, "unit": ""}
    assert [r["delta"] for r in readings[1:]] == [3, 4, 3, 0, 5, 1, 0, 2, 8, 1, 9]
    assert readings[-1]["total"] == 36
    stats = [e for e in out if e.stream == "parts.stats"]
    assert len(stats) == 1 and stats[0].ts_ns == T0 and stats[0].kind == "features"
    assert stats[0].payload["delta"] == 3 + 4 + 3 + 0 + 5 + 1 + 0 + 2 + 8  # readings at 0…9 s
    assert stats[0].payload["count"] == 10


def test_interval_statistics_are_aligned_to_the_clock_and_count_bad_readings():
    proc = make_processor(slow_sensor({"aggregate_s": 5}))
    vals = [1.0, 2.0, 3.0, None, 5.0, 6.0, 7.0]
    out = []
    for i, v in enumerate(vals):
        r = Reading("temp", T0 + 2 * NS + i * NS, v, "degC", Quality.BAD if v is None else Quality.GOOD)
        out.extend(proc.on_reading(r))
    out.extend(proc.tick(T0 + 10 * NS))
    stats = [e for e in out if e.stream == "temp.stats"]
    assert [(e.ts_ns - T0) // NS for e in stats] == [0, 5]
    first, second = (e.payload for e in stats)
    assert (first["count"], first["bad"], first["min"], first["max"], first["last"]) == (3, 0, 1.0, 3.0, 3.0)
    assert first["std"] == pytest.approx(np.std([1.0, 2.0, 3.0]))
    assert (second["count"], second["bad"], second["mean"]) == (3, 1, 6.0)
    assert stats[1].quality == Quality.UNCERTAIN


def test_slow_machine_state_from_motor_current():
    proc = make_processor(slow_sensor({"state": {"off_below": 1, "running_above": 10, "hysteresis": 1,
                                                 "min_dwell_s": 5, "report_s": 600}}, name="motor_current"))
    trace = [0.1] * 100 + [4.0] * 60 + [14.0] * 300 + [0.2] * 40
    proc.tick(T0)
    out = []
    for i, v in enumerate(trace):
        out.extend(proc.on_reading(Reading("motor_current", T0 + i * NS, v, "A")))
    events = [e.payload for e in out if e.stream == "motor_current.events"]
    assert [(e["state"], e["previous_s"]) for e in events] == [
        ("off", None), ("idle", 100.0), ("running", 60.0), ("off", 300.0)]
    report = proc.tick(T0 + 600 * NS)
    r = report[0].payload
    assert (r["off_s"], r["idle_s"], r["running_s"]) == (139.0, 60.0, 300.0)
    assert r["availability"] == pytest.approx(300 / 499)


def test_slow_anomaly_events():
    proc = make_processor(slow_sensor({"anomaly": {"warmup": 20, "z": 5}}))
    rng = np.random.default_rng(2)
    out = feed(proc, list(rng.normal(40, 0.2, 30)) + [45.0])
    events = [e for e in out if e.kind == "event"]
    assert len(events) == 1 and events[0].stream == "temp.events" and events[0].payload["event"] == "anomaly"


def test_zone_events_need_the_new_zone_to_hold_for_three_windows():
    rate, window = 6400.0, 1024  # 100 Hz sits on bin 16
    t = np.arange(window) / rate

    def win(mm_s):  # a 100 Hz tone with a velocity RMS of mm_s
        return mm_s * 1e-3 * np.sqrt(2) * 2 * np.pi * 100 * np.sin(2 * np.pi * 100 * t)

    levels = [1.0, 2.0, 1.0, 2.0, 2.0, 2.0, 2.0, 5.0]  # zones A, B, A, B, B, B, B, D (group2_rigid)
    proc = make_processor(stream_sensor({"iso": "group2_rigid"}, window=window))
    x = np.concatenate([win(v) for v in levels])
    out = run_stream(proc, x, rate=rate, size=window)
    assert [e.payload["zone"] for e in out if e.kind == "features"] == list("ABABBBBD")
    events = [(e.payload["zone"], e.payload["previous"], (e.ts_ns - T0) * rate // NS // window)
              for e in out if e.kind == "event"]
    assert events == [("B", "A", 3)]  # dated from the first of the three windows


def test_degenerate_windows_do_not_break_the_record():
    proc = make_processor(stream_sensor({"bands": [[0, 100]], "sk": True, "bearing": "6205", "shaft_hz": 20},
                                        window=64))
    x = np.zeros(128)
    x[64:] = np.nan
    out = run_stream(proc, x, size=64)
    assert len(out) == 2
    for e in out:
        json.loads(payload_json(e.payload))
    zero = out[0].payload["features"]["x"]
    assert zero["rms"] == 0.0 and zero["bands"] == [0.0] and zero["peaks"] == []
    assert math.isnan(zero["crest"]) and math.isnan(zero["kurtosis"])  # 0/0, sent as null


def test_the_board_gives_the_tachometer_reading_nearest_to_the_window():
    board = ValueBoard()
    assert board.get("rpm") is None
    for k, v in enumerate([600.0, 1200.0, 1800.0]):
        board.post("rpm", T0 + k * NS, v, "rpm")
    assert board.get("rpm")[1] == 1800.0
    assert board.get("rpm", T0 + NS + NS // 3)[1] == 1200.0
    sensor = stream_sensor({"tachometer": "rpm", "bearing": "6205"}, window=64)
    proc = make_processor(sensor, board)
    assert proc.shaft_hz(T0 + 100) == pytest.approx(10.0)
    assert proc.shaft_hz(T0 + 2 * NS + 11 * NS) is None  # the nearest reading is 11 s away: too old


class GatedLoader(processing.KernelLoader):
    """The real loader, held back until the test opens the gate (a slow, cold-cache load on demand)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.fail = fail

    def _load(self) -> None:
        assert self.gate.wait(60)
        if self.fail:
            self.error = ImportError("no module named 'numba' (test)")
            self.done.set()
            return
        super()._load()


def test_background_processor_keeps_windows_until_the_kernels_load_then_computes_them_in_order(monkeypatch):
    loader = GatedLoader()
    monkeypatch.setattr(processing, "KERNELS", loader)
    proc = make_processor(stream_sensor(window=1024), background=True)  # returns while the kernels "load"
    x = np.random.default_rng(3).normal(size=(3 * 1024, 1))
    assert run_stream(proc, x) == []
    assert proc.tick(T0) == []
    loader.gate.set()
    loader.wait(60)
    out = proc.tick(T0 + NS)
    assert [e.ts_ns for e in out] == [T0 + int(round(k * 1024 * NS / 3200.0)) for k in range(3)]
    assert all(e.kind == "features" and "gap_before" not in e.payload for e in out)
    # the same numbers as a processor that had its kernels from the start
    direct = run_stream(make_processor(stream_sensor(window=1024)), x)
    assert [e.payload for e in out] == [e.payload for e in direct]
    # once ready, windows are computed as they complete
    assert len(run_stream(proc, x[:1024], t0=T0 + 3 * 1024 * NS // 3200 + 1)) == 1


def test_windows_beyond_the_pending_bound_are_dropped_and_reported_as_a_gap(monkeypatch):
    loader = GatedLoader()
    monkeypatch.setattr(processing, "KERNELS", loader)
    monkeypatch.setattr(processing, "PENDING_WINDOWS", 2)
    proc = make_processor(stream_sensor(window=512), background=True)
    x = np.random.default_rng(4).normal(size=(5 * 512, 1))
    assert run_stream(proc, x) == []
    loader.gate.set()
    loader.wait(60)
    out = proc.tick(T0)
    assert len(out) == 2
    assert out[0].payload["gap_before"] == 3 * 512  # the three oldest windows, dropped, are not silently lost
    assert "gap_before" not in out[1].payload


def test_a_kernel_load_failure_is_raised_by_the_processor(monkeypatch):
    loader = GatedLoader(fail=True)
    monkeypatch.setattr(processing, "KERNELS", loader)
    proc = make_processor(stream_sensor(window=512), background=True)
    x = np.random.default_rng(5).normal(size=(512, 1))
    assert run_stream(proc, x) == []
    loader.gate.set()
    assert loader.done.wait(60)
    with pytest.raises(RuntimeError, match="feature kernels could not be loaded.*numba"):
        run_stream(proc, x)


def test_kernels_still_compute_the_same_after_their_compiler_pages_are_released():
    proc = make_processor(stream_sensor({"bands": [[0, 400]], "sk": True, "envelope": {"band": "auto"}}, window=1024))
    x = np.random.default_rng(6).normal(size=(2 * 1024, 1))
    before = run_stream(proc, x[:1024])
    released = processing.release_compiler_pages()
    assert isinstance(released, int) and released >= 0
    again = run_stream(make_processor(stream_sensor({"bands": [[0, 400]], "sk": True,
                                                     "envelope": {"band": "auto"}}, window=1024)), x[:1024])
    assert before and [payload_json(e.payload) for e in again] == [payload_json(e.payload) for e in before]
