"""The emulated plant: one motor-driven machine whose physical signals feed every emulated sensor.

Signals are functions of time (seconds since the plant's epoch), so several sensors sampling the same plant see
one consistent machine: a motor-driven machine running at constant speed with imbalance, misalignment and
broadband noise, a bearing temperature that follows a slow cycle, and the electrical and process signals that the
emulated chips, GPIO inputs and Modbus devices read (`signal(name, t)`, names in `SIGNALS`).

The machine can be stopped and started by a scenario (`set_running`); stopping it zeroes speed, load current and
part count rate (the vibration waveform is left to the scenario work).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np


class Plant:
    def __init__(self, shaft_hz: float = 24.75, imbalance_ms2: float = 2.0, misalignment_ms2: float = 0.6,
                 noise_ms2: float = 0.3, ambient_c: float = 22.0, seed: int | None = None) -> None:
        self.shaft_hz = shaft_hz
        self.imbalance_ms2 = imbalance_ms2
        self.misalignment_ms2 = misalignment_ms2
        self.noise_ms2 = noise_ms2
        self.ambient_c = ambient_c
        self.epoch_ns = time.time_ns()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._running = True
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

    def vibration(self, t: np.ndarray, axis: int = 0) -> np.ndarray:
        """Acceleration in m/s² at plant times `t` (s) on one axis: 1× imbalance, 2× misalignment, noise."""
        w = 2 * math.pi * self.shaft_hz
        phase = axis * math.pi / 2  # the radial axes see the imbalance in quadrature
        with self._lock:
            noise = self._rng.normal(0.0, self.noise_ms2, size=t.shape)
        return (self.imbalance_ms2 * np.sin(w * t + phase)
                + self.misalignment_ms2 * np.sin(2 * w * t + 0.3 + phase) + noise)

    def bearing_temperature(self, t: float) -> float:
        """Bearing temperature in °C: ambient plus a load-dependent rise with a slow 10-minute swing."""
        return self.ambient_c + 18.0 + 1.5 * math.sin(2 * math.pi * t / 600.0)

    # -- state --------------------------------------------------------------------------------------------------
    def set_running(self, running: bool) -> None:
        self._running = bool(running)

    def running(self, t: float = 0.0) -> bool:
        return self._running

    # -- signals ------------------------------------------------------------------------------------------------
    def shaft_speed_hz(self, t: float) -> float:
        return self.shaft_hz if self._running else 0.0

    def motor_current(self, t: float, phase: int = 0) -> float:
        """RMS current of one motor phase in A (a 2 % imbalance between phases, a slow 1 % load swing)."""
        base = self.load_current_a if self._running else self.idle_current_a
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
        return self.energy_start_kwh + sum(self.power(t, k) for k in range(3)) * max(t, 0.0) / 3.6e6

    def part_rate(self, t: float) -> float:
        return self.parts_per_s if self._running else 0.0

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
            "vfd_speed_percent": lambda: 99.0 if run else 0.0,
            "motor_torque_percent": lambda: 68.5 if run else 0.0,
            "motor_power_percent": lambda: 66.0 if run else 0.0,
            "motor_voltage": lambda: 398.0 if run else 0.0,
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
