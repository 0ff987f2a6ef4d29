"""The plant model on its own: one physically consistent machine (no agent, no broker; fast)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from hal.clock import REAL_CLOCK, ScaledClock, clock_for
from hal.emulated.plant import DutyCycle, Plant

DUTY = DutyCycle(off_s=10, ramp_s=5, run_s=35, idle_s=10)


def cycling(**kw: float) -> Plant:
    p = Plant(seed=3, **kw)
    p.schedule("cycle", DUTY, at=0.0)
    return p


def test_the_duty_cycle_goes_off_ramp_running_idle_and_repeats() -> None:
    p = cycling()
    assert [p.state(t) for t in (5, 12, 30, 55, 65, 72, 90)] == ["off", "ramp", "running", "idle", "off", "ramp",
                                                                  "running"]
    assert p.shaft_speed_hz(12.5) == pytest.approx(p.shaft_hz / 2)  # halfway up the ramp
    assert DUTY.availability == pytest.approx(35 / 60)


def test_parts_only_while_running_and_current_follows_the_load() -> None:
    p = cycling()
    assert [p.part_rate(t) > 0 for t in (5, 12, 30, 55)] == [False, False, True, False]
    off, ramp, run, idle = (p.motor_current(t, 1) for t in (5, 12, 30, 55))
    assert off == 0.0 and idle < ramp < run
    assert run == pytest.approx(p.load_current_a, rel=0.02)
    assert p.signal("motor_torque_percent", 30) > p.signal("motor_torque_percent", 55) > 0


def test_the_energy_counter_integrates_the_power() -> None:
    p = cycling()
    t = np.linspace(100.0, 400.0, 30001)
    kw = np.array([p.signal("power_total", x) for x in t[::10]]) / 1000
    integral_kwh = float(np.trapezoid(kw, t[::10])) / 3600
    assert p.energy_import_kwh(400) - p.energy_import_kwh(100) == pytest.approx(integral_kwh, rel=0.01)
    assert p.energy_import_kwh(7) == p.energy_import_kwh(3)  # off: the counter stands still


def test_phase_energy_and_temperature_continue_across_a_schedule_change() -> None:
    p = cycling()
    before = (float(p.revs(np.array([200.0]))[0]), p.energy_import_kwh(200.0))
    p.schedule("run", at=200.0)
    after = (float(p.revs(np.array([200.0]))[0]), p.energy_import_kwh(200.0))
    assert after == pytest.approx(before)
    assert p.revs(np.array([201.0]))[0] - after[0] == pytest.approx(p.shaft_hz)


def test_the_bearing_warms_with_the_load_through_its_time_constant() -> None:
    p = Plant()
    p.schedule("off", at=0.0)
    cold = p.bearing_temperature(5 * p.thermal_tau_s)
    assert cold == pytest.approx(p.ambient_c, abs=0.3)
    p.schedule("run", at=5 * p.thermal_tau_s)
    start = 5 * p.thermal_tau_s
    rise = p.bearing_rise_idle_c + p.bearing_rise_load_c
    one_tau = p.bearing_temperature(start + p.thermal_tau_s) - p.ambient_c
    assert one_tau == pytest.approx(rise * (1 - math.exp(-1)), rel=0.03)
    assert p.bearing_temperature(start + 6 * p.thermal_tau_s) == pytest.approx(p.ambient_c + rise, abs=0.1)


def test_vibration_grows_with_speed_and_with_the_bearing_fault() -> None:
    p = cycling(imbalance_ms2=0.35, misalignment_ms2=0.15, noise_ms2=0.15)
    t = 20 + np.arange(3200) / 3200  # running

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(x * x)))
    healthy = rms(p.vibration(t))
    stopped = rms(p.vibration(t - 15))  # off
    p.bearing_fault(start_s=0.0, grow_s=100.0, severity=1.0)
    assert stopped < 0.2 * healthy
    assert rms(p.vibration(t + 60)) > rms(p.vibration(t)) > 2 * healthy  # severity 0.8 > 0.2 > 0
    # the impacts come at the ball-pass frequency of the outer race: the envelope's spectrum peaks there
    x = p.vibration(np.arange(16384) / 3200 + 80)
    env = np.abs(x - x.mean())
    spec = np.abs(np.fft.rfft(env - env.mean()))
    freqs = np.fft.rfftfreq(len(env), 1 / 3200)
    band = (freqs > 20) & (freqs < 200)
    assert freqs[band][np.argmax(spec[band])] == pytest.approx(p.bearing_bpfo_order * p.shaft_hz, rel=0.02)


def test_without_a_schedule_the_machine_is_the_steady_one_it_always_was() -> None:
    p = Plant(seed=1)
    assert p.state(10) == "running" and p.part_rate(10) == p.parts_per_s
    p.set_running(False)
    assert p.shaft_speed_hz(10) == 0 and p.motor_current(10) == pytest.approx(p.idle_current_a, rel=0.05)


def test_a_duty_cycle_must_have_a_period() -> None:
    with pytest.raises(ValueError, match="off_s"):
        DutyCycle(off_s=-1)
    with pytest.raises(ValueError, match="period"):
        DutyCycle(0, 0, 0, 0)


def test_a_scaled_clock_runs_plant_time_faster() -> None:
    assert clock_for(1) is REAL_CLOCK and clock_for(None) is REAL_CLOCK
    clock = ScaledClock(200.0)
    t0, ns0 = clock.monotonic(), clock.time_ns()
    clock.sleep(2.0)  # 10 ms of real time
    assert clock.monotonic() - t0 >= 2.0 and clock.time_ns() - ns0 >= 2_000_000_000
    stop = threading.Event()
    stop.set()
    assert clock.wait(stop, 1000.0) is True  # returns at once when set
    with pytest.raises(ValueError):
        ScaledClock(0)
    p = Plant(clock=clock)
    before = p.now()
    clock.sleep(1.0)
    assert p.now() - before >= 1.0


def _velocity_rms_mm_s(a: np.ndarray, rate: float) -> float:
    """ISO 10816 velocity RMS, 10-1000 Hz, by integrating the spectrum (a / (j 2 pi f)); independent of agent/."""
    spec = np.fft.rfft(a - a.mean())
    f = np.fft.rfftfreq(len(a), 1 / rate)
    band = (f >= 10) & (f <= 1000)
    v = np.zeros_like(spec)
    v[band] = spec[band] / (2j * np.pi * f[band])
    return float(np.sqrt(np.mean(np.fft.irfft(v, len(a)) ** 2))) * 1000.0


def test_the_default_plant_is_a_healthy_machine_and_a_fault_raises_it() -> None:
    """No [plant] section (a user's own scenario, --scenario none): ISO 10816-3 group 2 rigid, zone A/B (< 2.8 mm/s);
    the grown bearing fault takes it beyond zone B."""
    p = Plant(seed=5)
    t = 30 + np.arange(3200 * 4) / 3200
    healthy = max(_velocity_rms_mm_s(p.vibration(t, axis), 3200) for axis in range(3))
    assert 0.5 < healthy < 2.8, healthy
    p.bearing_fault(start_s=0.0, grow_s=10.0, severity=1.0)
    worn = max(_velocity_rms_mm_s(p.vibration(t, axis), 3200) for axis in range(3))
    assert worn > 2.8 and worn > 2 * healthy, (healthy, worn)
