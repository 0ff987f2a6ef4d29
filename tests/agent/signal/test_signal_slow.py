"""Slow-signal building blocks with explicit timestamps: deadband, counters, interval statistics, machine state
and the Welford baseline."""

import math

import numpy as np
import pytest

from agent.signal.slow import NS, AnomalyDetector, Baseline, Counter, Deadband, IntervalStats, MachineState


def published(db: Deadband, values, step_s=1.0, quality="good"):
    return [(i, v) for i, v in enumerate(values) if db.offer(int(i * step_s * NS), v, quality)]


def test_deadband_step_publishes_each_step_once():
    db = Deadband(absolute=1.0)
    values = [0.0] * 5 + [10.0] * 5 + [10.5] * 3 + [8.9] * 2
    assert published(db, values) == [(0, 0.0), (5, 10.0), (13, 8.9)]


def test_deadband_ramp_publishes_every_change_beyond_the_band():
    db = Deadband(absolute=1.0)
    ramp = [0.3 * i for i in range(21)]
    # |v − last published| must exceed 1.0: 0 → 1.2 → 2.4 → …, every 4th sample
    assert [i for i, _ in published(db, ramp)] == [0, 4, 8, 12, 16, 20]


def test_percent_deadband_and_quality_changes():
    db = Deadband(percent=10.0)
    assert db.offer(0, 100.0, "good")
    assert not db.offer(1, 109.0, "good")
    assert db.offer(2, 111.0, "good")
    assert db.offer(3, 111.0, "bad")  # a quality change is always published
    assert not db.offer(4, 111.0, "bad")
    assert db.offer(5, "on", "bad") and not db.offer(6, "on", "bad")  # non-numeric: on change


def test_heartbeat_bounds_the_silence():
    db = Deadband(absolute=5.0, heartbeat_s=10.0)
    out = published(db, [1.0] * 25, step_s=1.0)
    assert [i for i, _ in out] == [0, 10, 20]
    assert db.silent_too_long(30 * NS) and not db.silent_too_long(29 * NS)


def test_counter_deltas_with_rollover_and_reset():
    c = Counter(rollover=65536)
    deltas = [c.update(v) for v in [65530, 65535, 3, 10]]
    assert deltas == [None, 5, 4, 7]
    assert c.total == 16
    r = Counter()  # no modulus: a decrease is a restart from zero
    assert [r.update(v) for v in [100, 120, 5, 9]] == [None, 20, 5, 4]
    assert r.resets == 1


def test_interval_stats_match_numpy():
    rng = np.random.default_rng(1)
    v = rng.normal(20, 3, 57)
    s = IntervalStats()
    for x in v:
        s.add(x)
    out = s.summary()
    assert out["count"] == 57 and out["last"] == v[-1]
    assert out["mean"] == pytest.approx(v.mean(), rel=1e-12)
    assert out["std"] == pytest.approx(v.std(), rel=1e-9)
    assert (out["min"], out["max"]) == (v.min(), v.max())
    s.reset()
    assert s.summary()["count"] == 0 and s.summary()["mean"] is None


def current_trace():
    """1 Hz motor current (A): 100 s off, 60 s idle (with a 2 s spike), 300 s running (with dips near the
    threshold), 40 s off. Thresholds: off below 1 A, running at 10 A and above."""
    t = []
    t += [0.1] * 100
    t += [4.0] * 30 + [15.0] * 2 + [4.0] * 28          # a 2 s spike: shorter than the 5 s dwell
    t += [14.0] * 150 + [9.5, 9.2, 9.6] * 10 + [14.0] * 120  # dips to 9.2…9.6: inside the 1 A hysteresis
    t += [0.2] * 40
    return t


def test_machine_state_durations_with_hysteresis_and_dwell():
    m = MachineState(off_below=1.0, running_above=10.0, hysteresis=1.0, min_dwell_s=5.0)
    transitions = []
    for i, v in enumerate(current_trace()):
        tr = m.observe(i * NS, v)
        if tr:
            transitions.append((tr.state, tr.since_ns // NS, tr.previous_s))
    assert transitions == [("off", 0, None), ("idle", 100, 100.0), ("running", 160, 60.0), ("off", 460, 300.0)]
    totals = m.totals_ns()
    # the last observation is at 499 s: off from 0 to 100 and from 460 to 499
    assert totals == {"off": 139 * NS, "idle": 60 * NS, "running": 300 * NS}


def test_machine_state_without_hysteresis_follows_every_crossing():
    m = MachineState(off_below=1.0, running_above=10.0)
    states = [m.observe(i * NS, v) for i, v in enumerate([14.0, 9.5, 14.0])]
    assert [s.state for s in states] == ["running", "idle", "running"]


def test_pending_state_is_not_counted_until_it_has_lasted_the_dwell():
    m = MachineState(off_below=1.0, running_above=10.0, min_dwell_s=5.0)
    for i, v in enumerate([0.0] * 10 + [20.0] * 3):
        m.observe(i * NS, v)
    assert m.state == "off"
    assert m.totals_ns() == {"off": 10 * NS, "idle": 0, "running": 0}


def test_welford_baseline_matches_numpy():
    rng = np.random.default_rng(4)
    v = rng.normal(5, 2, 1000)
    b = Baseline()
    for x in v:
        b.add(x)
    assert b.mean == pytest.approx(v.mean(), rel=1e-12)
    assert b.std == pytest.approx(v.std(ddof=1), rel=1e-10)


def test_anomaly_events_on_entry_and_exit_only():
    rng = np.random.default_rng(5)
    det = AnomalyDetector(z=4.0, warmup=50)
    events = [det.observe("x.rms", float(v)) for v in rng.normal(1.0, 0.1, 200)]
    assert not any(events)
    b = det.baselines["x.rms"]
    mean, std, n = b.mean, b.std, b.n
    ev = det.observe("x.rms", 3.0)
    assert ev["event"] == "anomaly" and ev["z"] == pytest.approx((3.0 - mean) / std)
    assert det.observe("x.rms", 3.1) is None  # still anomalous: no repeat
    assert det.baselines["x.rms"].n == n  # anomalous values do not teach the baseline
    assert det.observe("x.rms", mean + 3.2 * std) is None  # above 3/4 of z: still the same anomaly
    assert det.observe("x.rms", 1.0)["event"] == "anomaly_cleared"
    assert det.observe("x.rms", math.nan) is None
