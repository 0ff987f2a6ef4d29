"""The emulated plant: one motor-driven machine whose physical signals feed every emulated sensor.

Signals are functions of time (seconds since the plant's epoch), so several sensors sampling the same plant see
one consistent machine: a motor-driven machine running at constant speed with imbalance, misalignment and
broadband noise, a bearing temperature that follows a slow cycle, and the electrical and process signals that the
emulated chips, GPIO inputs and Modbus devices read (`signal(name, t)`, names in `SIGNALS`).

The machine can be stopped and started (`set_running`); stopping it zeroes speed, load current and part count
rate. A scenario (`hal.emulated.scenario`) gives it an operating schedule and faults:

* `schedule(mode, duty)`: from now on the machine runs a `DutyCycle` (off → start-up ramp → running, producing →
  idle, spinning unloaded → off ...), or stays `run`, `idle` or `off`. Shaft speed follows it (the shaft phase is
  integrated, so a ramp is a chirp, not a jump); imbalance and misalignment grow with speed squared; motor current,
  power, torque and the VFD values follow the load; parts are made only while running; the energy counter
  integrates the power; the bearing temperature follows the load through a first-order thermal lag.
* `bearing_fault(start_s, grow_s, severity)`: an outer-race defect that grows from `start_s` (plant seconds): at
  every ball pass (BPFO, the shaft speed times the bearing's order) an impact rings the housing's structural
  resonance (`resonance_hz`, damping `resonance_zeta`), and the clearance it wears adds 1× looseness and broadband
  noise, so the velocity RMS (ISO zone) rises with it as well as the envelope's BPFO line.

Without a schedule the machine runs at constant speed from its epoch, as before. The defaults are a healthy machine
(ISO 10816-3 zone B, velocity RMS about 1.7 mm/s): a scenario without a `[plant]` section starts healthy, and only
faults raise the vibration. Plant time is the clock's time
(`hal.clock`): `now()` is seconds since the plant was made; `t(ts_ns)` converts a timestamp.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from hal.clock import REAL_CLOCK


@dataclass(frozen=True)
class DutyCycle:
    """One production cycle, repeated: off → start-up ramp (speed rises linearly) → running (loaded, producing
    parts) → idle (spinning at speed, unloaded, no parts) → off. Durations in plant seconds."""

    off_s: float = 20.0
    ramp_s: float = 10.0
    run_s: float = 70.0
    idle_s: float = 20.0
    ramp_load: float = 0.45  # load fraction while accelerating
    idle_load: float = 0.3  # load fraction while spinning unloaded

    def __post_init__(self) -> None:
        for name in ("off_s", "ramp_s", "run_s", "idle_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"duty cycle {name}: expected a duration >= 0 s, got {getattr(self, name)}")
        if self.period_s <= 0:
            raise ValueError("duty cycle: expected a positive period")

    @property
    def period_s(self) -> float:
        return self.off_s + self.ramp_s + self.run_s + self.idle_s

    @property
    def availability(self) -> float:
        """The share of the cycle spent running (what an availability report should show)."""
        return self.run_s / self.period_s

    def at(self, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(state code 0 off / 1 ramp / 2 running / 3 idle, speed fraction, load fraction) at cycle times `tau`."""
        tau = np.mod(np.asarray(tau, dtype=float), self.period_s)
        b1, b2, b3 = self.off_s, self.off_s + self.ramp_s, self.off_s + self.ramp_s + self.run_s
        state = np.where(tau < b1, 0, np.where(tau < b2, 1, np.where(tau < b3, 2, 3)))
        ramp = np.clip((tau - b1) / self.ramp_s, 0.0, 1.0) if self.ramp_s > 0 else np.ones_like(tau)
        frac = np.where(state == 0, 0.0, np.where(state == 1, ramp, 1.0))
        load = np.choose(state, [0.0, self.ramp_load, 1.0, self.idle_load])
        return state, frac, load


STATES = ("off", "ramp", "running", "idle")
_MODES = {"off": (0, 0.0, 0.0), "run": (2, 1.0, 1.0), "idle": (3, 1.0, None)}


class _Segment:
    """A stretch of the operating schedule from plant time `t0`, with the shaft revolutions and energy at its start
    (so phase and energy stay continuous across schedule changes)."""

    GRID_S = 0.005

    def __init__(self, t0: float, mode: str, duty: DutyCycle, revs0: float, kwh0: float, plant: "Plant") -> None:
        self.t0, self.mode, self.duty, self.revs0, self.kwh0 = t0, mode, duty, revs0, kwh0
        if mode == "cycle":  # cumulative revolutions and energy over one period, on a fine grid
            grid = np.arange(0.0, duty.period_s + self.GRID_S, self.GRID_S)
            _, frac, load = duty.at(np.minimum(grid, duty.period_s - 1e-9))
            self.grid = grid
            self.revs = np.concatenate([[0.0], np.cumsum((frac[1:] + frac[:-1]) / 2 * self.GRID_S)]) * plant.shaft_hz
            kw = plant.nominal_power_kw(load, frac)
            self.kwh = np.concatenate([[0.0], np.cumsum((kw[1:] + kw[:-1]) / 2 * self.GRID_S)]) / 3600.0
            self.period_revs, self.period_kwh = float(self.revs[-1]), float(self.kwh[-1])

    def at(self, t: np.ndarray, plant: "Plant") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tau = np.maximum(np.asarray(t, dtype=float) - self.t0, 0.0)
        if self.mode == "cycle":
            return self.duty.at(tau)
        state, frac, load = _MODES[self.mode]
        if load is None:
            load = self.duty.idle_load
        return np.full(tau.shape, state), np.full(tau.shape, frac), np.full(tau.shape, load)

    def revs_at(self, t: np.ndarray, plant: "Plant") -> np.ndarray:
        tau = np.maximum(np.asarray(t, dtype=float) - self.t0, 0.0)
        if self.mode == "cycle":
            n, r = np.divmod(tau, self.duty.period_s)
            return self.revs0 + n * self.period_revs + np.interp(r, self.grid, self.revs)
        return self.revs0 + tau * plant.shaft_hz * _MODES[self.mode][1]

    def kwh_at(self, t: float, plant: "Plant") -> float:
        tau = max(t - self.t0, 0.0)
        if self.mode == "cycle":
            n, r = divmod(tau, self.duty.period_s)
            return self.kwh0 + n * self.period_kwh + float(np.interp(r, self.grid, self.kwh))
        _, frac, load = self.at(np.array([t]), plant)
        return self.kwh0 + float(plant.nominal_power_kw(load, frac)[0]) * tau / 3600.0


class Plant:
    # Defaults: a healthy, well-balanced spindle - velocity RMS about 1.7 mm/s (10-1000 Hz), ISO 10816-3 zone B for
    # group 2 on a rigid foundation (A/B 1.4, B/C 2.8 mm/s). Faults (bearing_fault, a scenario's [plant]) raise it.
    HEALTHY = {"imbalance_ms2": 0.35, "misalignment_ms2": 0.15, "noise_ms2": 0.15}

    def __init__(self, shaft_hz: float = 24.75, imbalance_ms2: float = 0.35, misalignment_ms2: float = 0.15,
                 noise_ms2: float = 0.15, ambient_c: float = 22.0, seed: int | None = None, clock: Any = None) -> None:
        self.shaft_hz = shaft_hz
        self.imbalance_ms2 = imbalance_ms2
        self.misalignment_ms2 = misalignment_ms2
        self.noise_ms2 = noise_ms2
        self.ambient_c = ambient_c
        self.clock = clock or REAL_CLOCK
        self.epoch_ns = self.clock.time_ns()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._running = True
        # operating schedule (empty: constant speed, as before) and the bearing fault (scenarios)
        self._schedule: list[_Segment] = []
        self.bearing_bpfo_order = 3.5848  # SKF 6205: 9 balls, d/D = 0.3126/1.537, contact angle 0
        self.resonance_hz = 330.0  # the bearing housing's structural resonance the impacts excite
        self.resonance_zeta = 0.08
        self.fault_impact_ms2 = 40.0  # ringing amplitude of one impact at severity 1 and full speed
        self.fault_looseness_ms2 = 1.2  # 1× added by the worn clearance at severity 1
        self.fault_noise_ms2 = 0.6  # broadband noise added at severity 1
        self._fault: tuple[float, float, float] | None = None  # (start_s, grow_s, severity)
        self.thermal_tau_s = 300.0  # bearing temperature: first-order lag behind the load
        self.bearing_rise_idle_c = 6.0  # rise over ambient of a warm machine at zero load
        self.bearing_rise_load_c = 22.0  # additional rise at full load
        self._thermal: tuple[float, float] | None = None  # (plant time, temperature) of the integrator
        self.overrides: dict[str, float] = {}  # scripted values: signal name -> value (scenarios, tests)
        # electrical and process operating point (a 7.5 kW, 4-pole motor on a 400/230 V 50 Hz supply)
        self.line_voltage_v = 230.0
        self.line_hz = 50.0
        self.load_current_a = 12.4
        self.idle_current_a = 0.4
        self.power_factor = 0.86
        self.energy_start_kwh = 15234.5
        self.parts_per_s = 0.5
        self.process_pressure_bar = 6.2
        self.pressure_range_bar = (0.0, 10.0)
        self.cabinet_c = 31.0
        self.cabinet_rh = 45.0
        self.barometric_hpa = 1002.5
        self.supply_v = 24.1
        self.supply_a = 0.42

    def t(self, ts_ns: int) -> float:
        """Plant time in seconds for a wall-clock timestamp."""
        return (ts_ns - self.epoch_ns) / 1e9

    def now(self) -> float:
        """Plant time now (seconds since the plant was made, on its clock)."""
        return self.t(self.clock.time_ns())

    # -- operating schedule and faults (scenarios) --------------------------------------------------------------
    def schedule(self, mode: str, duty: DutyCycle | None = None, at: float | None = None) -> None:
        """From plant time `at` (default now): `cycle` (repeat `duty`, starting with its off phase), `run`, `idle`
        or `off`. Shaft phase, energy and temperature continue across the change."""
        if mode not in ("cycle", "run", "idle", "off"):
            raise ValueError(f"plant schedule: expected cycle, run, idle or off, got {mode!r}")
        t0 = self.now() if at is None else float(at)
        duty = duty or (self._schedule[-1].duty if self._schedule else DutyCycle())
        revs0 = float(self.revs(np.array([t0]))[0])
        kwh0 = self.energy_import_kwh(t0)
        with self._lock:
            self._schedule = [s for s in self._schedule if s.t0 < t0]
            self._schedule.append(_Segment(t0, mode, duty, revs0, kwh0, self))

    @property
    def duty(self) -> DutyCycle | None:
        """The duty cycle being run, if the machine is cycling."""
        seg = self._segment(self.now())
        return seg.duty if seg is not None and seg.mode == "cycle" else None

    def bearing_fault(self, start_s: float | None = None, grow_s: float = 600.0, severity: float = 1.0) -> None:
        """An outer-race fault appearing at plant time `start_s` (default now) and growing linearly to `severity`
        over `grow_s` seconds. `severity` 0 heals the bearing (a replacement)."""
        start = self.now() if start_s is None else float(start_s)
        self._fault = None if severity <= 0 else (start, max(float(grow_s), 1e-3), float(severity))

    def fault_severity(self, t: float) -> float:
        f = self._fault
        if f is None or t < f[0]:
            return 0.0
        return f[2] * min((t - f[0]) / f[1], 1.0)

    def _segment(self, t: float) -> _Segment | None:
        sched = self._schedule
        if not sched:
            return None
        for seg in reversed(sched):
            if seg.t0 <= t:
                return seg
        return sched[0]

    def operating(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(state code, speed fraction, load fraction) at plant times `t` (arrays); see `STATES`."""
        t = np.atleast_1d(np.asarray(t, dtype=float))
        if not self._running:
            return np.zeros(t.shape, dtype=int), np.zeros(t.shape), np.zeros(t.shape)
        seg = self._segment(float(t[0]))
        if seg is None:
            return np.full(t.shape, 2), np.ones(t.shape), np.ones(t.shape)
        return seg.at(t, self)

    def state(self, t: float) -> str:
        return STATES[int(self.operating(t)[0][0])]

    def _op1(self, t: float) -> tuple[int, float, float]:
        s, f, ld = self.operating(t)
        return int(s[0]), float(f[0]), float(ld[0])

    def revs(self, t: np.ndarray) -> np.ndarray:
        """Shaft revolutions since the epoch at plant times `t` (the integral of the speed)."""
        t = np.asarray(t, dtype=float)
        seg = self._segment(float(t.flat[0])) if t.size else None
        if seg is None:
            return self.shaft_hz * t
        return seg.revs_at(t, self)

    def nominal_power_kw(self, load: np.ndarray, frac: np.ndarray) -> np.ndarray:
        """Three-phase input power at nominal voltage for load and speed fractions (arrays)."""
        current = self._current(np.asarray(load), np.asarray(frac))
        pf = np.where(np.asarray(frac) > 0, self.power_factor, 0.2)
        return 3 * self.line_voltage_v * current * pf / 1000.0

    def _current(self, load: Any, frac: Any) -> Any:
        """Phase current in A for a load fraction; 0 with the motor stopped (off)."""
        running = np.asarray(frac) > 0
        return np.where(running, self.idle_current_a + (self.load_current_a - self.idle_current_a) * load, 0.0)

    def vibration(self, t: np.ndarray, axis: int = 0) -> np.ndarray:
        """Acceleration in m/s² at plant times `t` (s) on one axis: 1× imbalance and 2× misalignment (growing with
        speed squared), broadband noise, and the bearing fault's impacts ringing the structural resonance."""
        t = np.asarray(t, dtype=float)
        phase = axis * math.pi / 2  # the radial axes see the imbalance in quadrature
        with self._lock:
            noise = self._rng.normal(0.0, 1.0, size=t.shape)
        if not t.size:
            return noise
        _, frac, _ = self.operating(t)
        ph = 2 * math.pi * self.revs(t)
        f2 = frac * frac
        sev = self.fault_severity(float(t.flat[-1]))
        out = (self.imbalance_ms2 * f2 * np.sin(ph + phase) + self.misalignment_ms2 * f2 * np.sin(2 * ph + 0.3 + phase)
               + (self.noise_ms2 * (0.3 + 0.7 * frac) + self.fault_noise_ms2 * sev * frac) * noise)
        if sev > 0:
            out += self.fault_looseness_ms2 * sev * f2 * np.sin(ph + phase + 1.1)
            out += self._impacts(t, frac, ph, sev) * (1.0, 0.7, 0.45)[axis % 3]
        return out

    def _impacts(self, t: np.ndarray, frac: np.ndarray, ph: np.ndarray, sev: float) -> np.ndarray:
        """Outer-race impacts: one per ball pass (phase × BPFO order), each a decaying ring at the resonance; the
        last four impacts overlap. Impact strength varies from ball to ball (deterministic per impact)."""
        order = self.bearing_bpfo_order
        passes = ph / (2 * math.pi) * order
        k = np.floor(passes)
        f_pass = np.maximum(frac * self.shaft_hz * order, 1e-6)
        wr = 2 * math.pi * self.resonance_hz
        wd = wr * math.sqrt(1 - self.resonance_zeta ** 2)
        out = np.zeros_like(t)
        for j in range(4):
            tau = (passes - k + j) / f_pass  # time since impact k - j
            kk = k - j
            strength = 0.75 + 0.5 * np.mod(np.sin(kk * 12.9898) * 43758.5453, 1.0)
            out += strength * np.exp(-self.resonance_zeta * wr * tau) * np.sin(wd * tau)
        return self.fault_impact_ms2 * sev * frac * frac * np.where(frac > 0.05, out, 0.0)

    def bearing_temperature(self, t: float) -> float:
        """Bearing temperature in °C. Without a schedule: ambient plus a rise with a slow 10-minute swing. With
        one: a first-order lag (`thermal_tau_s`) behind the load's steady-state rise."""
        if not self._schedule:
            return self.ambient_c + 18.0 + 1.5 * math.sin(2 * math.pi * t / 600.0)
        with self._lock:
            state = self._thermal
        if state is None:  # start warm: the mean steady-state temperature of what the machine is doing
            seg = self._segment(t)
            assert seg is not None
            tau = seg.t0 + (np.linspace(0, seg.duty.period_s, 200, endpoint=False) if seg.mode == "cycle"
                            else np.zeros(1))
            _, frac, load = seg.at(tau, self)
            rise = np.where(frac > 0, self.bearing_rise_idle_c + self.bearing_rise_load_c * load, 0.0)
            state = (t, self.ambient_c + float(np.mean(rise)))
        t_last, temp = state
        while t > t_last + 1e-9:  # integrate in steps of at most 1 s with the load in each step's middle
            dt = min(t - t_last, 1.0)
            _, frac, load = self._op1(t_last + dt / 2)
            target = self.ambient_c + (self.bearing_rise_idle_c + self.bearing_rise_load_c * load if frac > 0
                                       else 0.0)
            temp += (target - temp) * (1.0 - math.exp(-dt / self.thermal_tau_s))
            t_last += dt
        with self._lock:
            if self._thermal is None or t_last >= self._thermal[0]:
                self._thermal = (t_last, temp)
            else:
                temp = self._thermal[1]  # another sensor asked for a later time already
        return temp

    # -- state --------------------------------------------------------------------------------------------------
    def set_running(self, running: bool) -> None:
        """Stop (False) or release (True) the machine: a stop overrides the schedule."""
        self._running = bool(running)

    def running(self, t: float = 0.0) -> bool:
        """The motor turns (ramp, running or idle)."""
        if not self._schedule:
            return self._running
        return self._op1(t)[1] > 0

    # -- signals ------------------------------------------------------------------------------------------------
    def shaft_speed_hz(self, t: float) -> float:
        if not self._schedule:
            return self.shaft_hz if self._running else 0.0
        return self.shaft_hz * self._op1(t)[1]

    def motor_current(self, t: float, phase: int = 0) -> float:
        """RMS current of one motor phase in A (a 2 % imbalance between phases, a slow 1 % load swing)."""
        if not self._schedule:
            base = self.load_current_a if self._running else self.idle_current_a
        else:
            _, frac, load = self._op1(t)
            base = float(self._current(load, frac))
        return base * (1.0 + 0.02 * (phase - 1)) * (1.0 + 0.01 * math.sin(2 * math.pi * t / 60.0))

    def motor_current_waveform(self, t: np.ndarray | float, phase: int = 0) -> np.ndarray | float:
        """Instantaneous phase current in A (what a current-transformer clamp sees)."""
        return math.sqrt(2) * self.motor_current(float(np.mean(t)), phase) * np.sin(
            2 * math.pi * self.line_hz * np.asarray(t) - phase * 2 * math.pi / 3)

    def line_voltage(self, t: float, phase: int = 0) -> float:
        return self.line_voltage_v * (1.0 + 0.003 * (phase - 1)) + 0.8 * math.sin(2 * math.pi * t / 17.0)

    def power(self, t: float, phase: int = 0) -> float:
        return self.line_voltage(t, phase) * self.motor_current(t, phase) * self.power_factor

    def energy_import_kwh(self, t: float) -> float:
        """The meter's import counter: the integral of the power since the epoch (with a schedule: of the
        nominal-voltage power, so it is exact for any reading order)."""
        seg = self._segment(t)
        if seg is None:
            return self.energy_start_kwh + sum(self.power(t, k) for k in range(3)) * max(t, 0.0) / 3.6e6
        return seg.kwh_at(t, self)

    def part_rate(self, t: float) -> float:
        """Parts per second: only while running (loaded)."""
        if not self._schedule:
            return self.parts_per_s if self._running else 0.0
        return self.parts_per_s if self._op1(t)[0] == 2 else 0.0

    def loop_current_ma(self, t: float) -> float:
        """A 4-20 mA pressure transmitter (0-10 bar) on the machine's hydraulic line."""
        lo, hi = self.pressure_range_bar
        bar = self.process_pressure_bar + 0.3 * math.sin(2 * math.pi * t / 45.0)
        return 4.0 + 16.0 * (bar - lo) / (hi - lo)

    SIGNALS = (
        "running", "shaft_speed_hz", "shaft_speed_rpm", "motor_frequency_hz", "line_frequency",
        "line_voltage_l1", "line_voltage_l2", "line_voltage_l3", "motor_current_l1", "motor_current_l2",
        "motor_current_l3", "neutral_current", "power_l1", "power_l2", "power_l3", "power_total", "power_factor",
        "energy_import_kwh", "part_rate", "loop_current_ma", "cabinet_temperature", "cabinet_humidity",
        "barometric_pressure", "supply_voltage", "supply_current", "bearing_temperature", "vfd_status_word",
        "vfd_speed_percent", "motor_torque_percent", "motor_power_percent", "motor_voltage", "dc_link_voltage",
    )

    def signal(self, name: str, t: float) -> float:
        """The value of a named plant signal at plant time `t` (scripted overrides win)."""
        if name in self.overrides:
            return self.overrides[name]
        run = self._running
        frac, load = 1.0, 1.0
        if self._schedule:
            _, frac, load = self._op1(t)
            run = frac > 0
        table = {
            "running": lambda: 1.0 if run else 0.0,
            "shaft_speed_hz": lambda: self.shaft_speed_hz(t),
            "shaft_speed_rpm": lambda: self.shaft_speed_hz(t) * 60.0,
            "motor_frequency_hz": lambda: self.shaft_speed_hz(t) * 2.0 * 1.0101,  # 4 poles, 1 % slip
            "line_frequency": lambda: self.line_hz + 0.02 * math.sin(2 * math.pi * t / 30.0),
            "neutral_current": lambda: abs(self.motor_current(t, 2) - self.motor_current(t, 0)) / 2,
            "power_total": lambda: sum(self.power(t, k) for k in range(3)),
            "power_factor": lambda: self.power_factor if run else 0.2,
            "energy_import_kwh": lambda: self.energy_import_kwh(t),
            "part_rate": lambda: self.part_rate(t),
            "loop_current_ma": lambda: self.loop_current_ma(t),
            "cabinet_temperature": lambda: self.cabinet_c + 0.5 * math.sin(2 * math.pi * t / 900.0),
            "cabinet_humidity": lambda: self.cabinet_rh + 2.0 * math.sin(2 * math.pi * t / 1200.0),
            "barometric_pressure": lambda: self.barometric_hpa,
            "supply_voltage": lambda: self.supply_v - 0.05 * (self.supply_a / 0.42),
            "supply_current": lambda: self.supply_a * (1.0 + 0.05 * math.sin(2 * math.pi * t / 10.0)),
            "bearing_temperature": lambda: self.bearing_temperature(t),
            "vfd_status_word": lambda: float(0b0000_0001 | (0b10 if run else 0)),
            "vfd_speed_percent": lambda: 99.0 * frac if run else 0.0,
            "motor_torque_percent": lambda: (15.0 + 53.5 * load) * (load > 0) if run else 0.0,
            "motor_power_percent": lambda: 66.0 * load * frac if run else 0.0,
            "motor_voltage": lambda: 398.0 * max(frac, 0.05) if run else 0.0,
            "dc_link_voltage": lambda: 562.0,
        }
        for k in range(3):
            table[f"line_voltage_l{k + 1}"] = lambda k=k: self.line_voltage(t, k)
            table[f"motor_current_l{k + 1}"] = lambda k=k: self.motor_current(t, k)
            table[f"power_l{k + 1}"] = lambda k=k: self.power(t, k)
        try:
            return float(table[name]())
        except KeyError:
            raise KeyError(f"unknown plant signal {name!r} (known: {', '.join(self.SIGNALS)})") from None
