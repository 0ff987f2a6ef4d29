"""Scenarios: a scripted timeline for the emulated plant and its emulated buses, written in TOML, run on the plant's
clock (so at `--speed 20` a ten-minute scenario takes thirty seconds).

A scenario file::

    name = "bearing-wear"
    description = "a shift with a bearing fault starting at t = 10 min"
    start = "cycle"                 # the machine's schedule at t = 0: cycle (the duty cycle), run, idle or off
    [plant]                         # plant parameters (attributes of hal.emulated.plant.Plant)
    imbalance_ms2 = 0.3
    [duty]                          # the duty cycle (hal.emulated.plant.DutyCycle)
    off_s = 20
    ramp_s = 10
    run_s = 70
    idle_s = 20
    [[events]]
    at = "10m"                      # seconds (a number) or "90s", "10m", "1h30m"
    action = "bearing_fault"
    grow_s = 1200
    severity = 1.0

Actions (extra keys in brackets; `for` = a duration after which the fault clears by itself):

| action | does |
|---|---|
| `shift_start` / `shift_end` | the duty cycle starts (from its off phase) / the machine goes off |
| `schedule` | `mode` = cycle, run, idle or off [`duty` table] |
| `stop` / `start` | an emergency stop (overrides the schedule) / release it |
| `bearing_fault` | an outer-race fault appears now and grows [`grow_s` 600, `severity` 1] |
| `bearing_replaced` | the fault is gone |
| `set` | `signal`, `value`: pin a plant signal [`for`] |
| `modbus_silent` | a Modbus device stops answering [`bus`, `unit`: default all; `for`] |
| `modbus_exception` | a device answers with exception `code` [`bus`, `unit`, `for`] |
| `i2c_nack` | an I2C NACK storm: `address` does not acknowledge [`bus`, `count` (-1: until cleared), `for`] |
| `i2c_stuck` | the I2C bus hangs (ETIMEDOUT) [`bus`, `for`] |
| `serial_unplug` | a serial line goes dead [`bus`, `for`] |
| `sensornode_unplug` | a USB sensor node is unplugged [`sensor`, `for`] |
| `broker_outage` | the broker is unreachable [`for`]; run by a hook (the agent does not own the broker: a test |
|  | maps it to its Mosquitto fixture) |

A bus fault on a bus that does not exist (or was not opened) is an error logged with the event, never an
exception in the runner. `ScenarioRunner.log` lists what happened when, in plant seconds since the scenario's start.
"""

from __future__ import annotations

import logging
import re
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hal.emulated.plant import DutyCycle, Plant
from hal.errors import ConfigurationError

log = logging.getLogger("hal.scenario")

SCENARIO_DIR = "scenarios"  # package data: hal/emulated/scenarios/*.toml

# action -> (required keys, optional keys with defaults, takes `for`)
ACTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any], bool]] = {
    "shift_start": ((), {}, False),
    "shift_end": ((), {}, False),
    "schedule": (("mode",), {"duty": None}, False),
    "stop": ((), {}, True),
    "start": ((), {}, False),
    "bearing_fault": ((), {"grow_s": 600.0, "severity": 1.0}, False),
    "bearing_replaced": ((), {}, False),
    "set": (("signal", "value"), {}, True),
    "modbus_silent": ((), {"bus": "", "unit": None}, True),
    "modbus_exception": (("code",), {"bus": "", "unit": None}, True),
    "i2c_nack": (("address",), {"bus": "", "count": -1}, True),
    "i2c_stuck": ((), {"bus": ""}, True),
    "serial_unplug": ((), {"bus": ""}, True),
    "sensornode_unplug": ((), {"sensor": ""}, True),
    "broker_outage": ((), {}, True),
}
PLANT_KEYS = ("shaft_hz", "imbalance_ms2", "misalignment_ms2", "noise_ms2", "ambient_c", "line_voltage_v",
              "load_current_a", "idle_current_a", "power_factor", "energy_start_kwh", "parts_per_s",
              "bearing_bpfo_order", "resonance_hz", "resonance_zeta", "fault_impact_ms2", "fault_looseness_ms2",
              "fault_noise_ms2", "thermal_tau_s", "bearing_rise_idle_c", "bearing_rise_load_c", "cabinet_c")
DUTY_KEYS = ("off_s", "ramp_s", "run_s", "idle_s", "ramp_load", "idle_load")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


class ScenarioError(ConfigurationError):
    """A scenario file that cannot be run: the message names the file, the key path and what was expected."""


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like "90s", "10m", "1h30m", "2.5m"."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration like \"90s\", \"10m\", \"1h30m\"")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected a time >= 0, got {value}")
        return float(value)
    if isinstance(value, str):
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", value.strip())
        if parts and re.fullmatch(r"(\s*\d+(?:\.\d+)?\s*[hms])+\s*", value):
            return sum(float(n) * _UNITS[u] for n, u in parts)
    raise ValueError(f"expected seconds or a duration like \"90s\", \"10m\", \"1h30m\", got {value!r}")


@dataclass(frozen=True)
class Event:
    at_s: float
    action: str
    params: Mapping[str, Any]
    for_s: float | None = None

    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items() if v not in ("", None))
        return f"{self.action}({extra})" if extra else self.action


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    start: str = "cycle"
    plant: Mapping[str, float] = field(default_factory=dict)
    duty: DutyCycle = field(default_factory=DutyCycle)
    events: tuple[Event, ...] = ()
    source: str = "<scenario>"

    @property
    def end_s(self) -> float:
        """When the last event (or its clearing) happens."""
        return max((e.at_s + (e.for_s or 0.0) for e in self.events), default=0.0)


def parse(raw: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a scenario table; every problem is reported at once (ScenarioError)."""
    problems: list[str] = []

    def bad(key: str, msg: str) -> None:
        problems.append(f"{source}: {key}: {msg}")

    known = {"name", "description", "start", "plant", "duty", "events"}
    for k in raw:
        if k not in known:
            bad(k, f"unknown key (expected one of {', '.join(sorted(known))})")
    name = raw.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        bad("name", "expected a non-empty string")
    start = raw.get("start", "cycle")
    if start not in ("cycle", "run", "idle", "off"):
        bad("start", f"expected cycle, run, idle or off, got {start!r}")
    plant: dict[str, float] = {}
    for k, v in dict(raw.get("plant", {})).items():
        if k not in PLANT_KEYS:
            bad(f"plant.{k}", f"unknown plant parameter (expected one of {', '.join(PLANT_KEYS)})")
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            bad(f"plant.{k}", f"expected a number, got {v!r}")
        else:
            plant[k] = float(v)
    duty = _duty(raw.get("duty", {}), "duty", bad) or DutyCycle()
    events: list[Event] = []
    raw_events = raw.get("events", [])
    if not isinstance(raw_events, list):
        bad("events", "expected an array of tables ([[events]])")
        raw_events = []
    for i, ev in enumerate(raw_events):
        where = f"events[{i}]"
        if not isinstance(ev, dict):
            bad(where, "expected a table")
            continue
        action = ev.get("action")
        if action not in ACTIONS:
            bad(f"{where}.action", f"expected one of {', '.join(ACTIONS)}, got {action!r}")
            continue
        required, optional, takes_for = ACTIONS[action]
        try:
            at = parse_duration(ev.get("at", 0))
        except ValueError as e:
            bad(f"{where}.at", str(e))
            continue
        for_s = None
        if "for" in ev:
            if not takes_for:
                bad(f"{where}.for", f"action {action} does not take a duration")
            else:
                try:
                    for_s = parse_duration(ev["for"])
                except ValueError as e:
                    bad(f"{where}.for", str(e))
        params: dict[str, Any] = dict(optional)
        for k, v in ev.items():
            if k in ("at", "action", "for"):
                continue
            if k not in required and k not in optional:
                keys = ", ".join(required + tuple(optional)) or "none"
                bad(f"{where}.{k}", f"unknown key for {action} (expected {keys})")
            params[k] = v
        for k in required:
            if k not in ev:
                bad(f"{where}.{k}", f"missing: {action} needs {k}")
        if action == "schedule" and params.get("mode") not in ("cycle", "run", "idle", "off"):
            bad(f"{where}.mode", f"expected cycle, run, idle or off, got {params.get('mode')!r}")
        if action == "schedule" and params.get("duty") is not None:
            params["duty"] = _duty(params["duty"], f"{where}.duty", bad)
        for k in ("grow_s", "severity", "value"):
            if k in params and (isinstance(params[k], bool) or not isinstance(params[k], (int, float))):
                bad(f"{where}.{k}", f"expected a number, got {params[k]!r}")
        for k in ("unit", "address", "code", "count"):
            if params.get(k) is not None and (isinstance(params[k], bool) or not isinstance(params[k], int)):
                bad(f"{where}.{k}", f"expected an integer, got {params[k]!r}")
        if action == "set" and params.get("signal") not in Plant.SIGNALS:
            bad(f"{where}.signal",
                f"expected a plant signal ({', '.join(Plant.SIGNALS)}), got {params.get('signal')!r}")
        events.append(Event(at, action, params, for_s))
    if problems:
        raise ScenarioError(f"invalid scenario ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n  "
                            + "\n  ".join(problems))
    return Scenario(name, str(raw.get("description", "")), start, plant, duty,
                    tuple(sorted(events, key=lambda e: e.at_s)), source)


def _duty(table: Any, where: str, bad: Callable[[str, str], None]) -> DutyCycle | None:
    if not isinstance(table, dict):
        bad(where, "expected a table")
        return None
    values: dict[str, float] = {}
    for k, v in table.items():
        if k not in DUTY_KEYS:
            bad(f"{where}.{k}", f"unknown key (expected one of {', '.join(DUTY_KEYS)})")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            bad(f"{where}.{k}", f"expected a number >= 0, got {v!r}")
        else:
            values[k] = float(v)
    try:
        return DutyCycle(**values)
    except ValueError as e:
        bad(where, str(e))
        return None


def names() -> list[str]:
    """The scenarios shipped with the package."""
    folder = resources.files("hal.emulated") / SCENARIO_DIR
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (`names()`), or a scenario file."""
    path = Path(name_or_path)
    if "\0" in str(path):
        raise ScenarioError(f"scenario {str(name_or_path)!r}: expected a name or a file path without NUL characters")
    if path.suffix == ".toml" or path.exists():
        if path.exists() and not path.is_file():  # a FIFO or a device would block the start, a directory fail later
            raise ScenarioError(f"scenario {name_or_path}: expected a regular .toml file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ScenarioError(f"scenario {name_or_path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
        source = str(path)
    else:
        res = resources.files("hal.emulated") / SCENARIO_DIR / f"{name_or_path}.toml"
        if not res.is_file():
            raise ScenarioError(f"scenario {name_or_path!r}: expected a shipped scenario ({', '.join(names())}) "
                                "or a .toml file")
        text, source = res.read_text(), f"{name_or_path}.toml"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{source}: not valid TOML: {e}") from None
    return parse(raw, source)


Hook = Callable[[bool], None]  # called with True when a fault starts, False when it ends


class ScenarioRunner:
    """Plays a scenario against a plant and the emulated buses of a HAL context, on the plant's clock.

    `context` is a `HalContext` or a callable returning the current one (an agent rebuilds its context on reload).
    `hooks` maps an action (e.g. "broker_outage") to a callable run at its start (True) and end (False); an action
    needing a hook that is missing is logged and skipped. Construction applies the plant parameters and the initial
    schedule (do it before the sensors start); `start()` starts the timeline at the plant's current time.
    """

    def __init__(self, scenario: Scenario, plant: Plant, context: Any = None,
                 hooks: Mapping[str, Hook] | None = None) -> None:
        self.scenario = scenario
        self.plant = plant
        self._context = context
        self.hooks = dict(hooks or {})
        self.log: list[tuple[float, str, str]] = []  # (plant s since start, what, "ok" or the error)
        self.errors = 0
        self.t0: float | None = None
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        for k, v in scenario.plant.items():
            setattr(plant, k, v)
        plant.schedule(scenario.start, scenario.duty)

    # -- timeline -----------------------------------------------------------------------------------------------
    def timeline(self) -> list[tuple[float, str, Callable[[], None]]]:
        """(at, label, action) for every event and every clearing, in time order."""
        steps: list[tuple[float, int, str, Callable[[], None]]] = []
        for i, ev in enumerate(self.scenario.events):
            begin, end = self._actions(ev)
            steps.append((ev.at_s, 2 * i, ev.label(), begin))
            if ev.for_s is not None and end is not None:
                steps.append((ev.at_s + ev.for_s, 2 * i + 1, f"end of {ev.label()}", end))
        steps.sort(key=lambda s: (s[0], s[1]))
        return [(at, label, fn) for at, _, label, fn in steps]

    def elapsed(self) -> float:
        return 0.0 if self.t0 is None else self.plant.now() - self.t0

    def start(self) -> "ScenarioRunner":
        self.t0 = self.plant.now()
        self.plant.schedule(self.scenario.start, self.scenario.duty, at=self.t0)  # the duty cycle starts with t = 0
        log.info("scenario %s: started (%d events over %.0f s of plant time)", self.scenario.name,
                 len(self.scenario.events), self.scenario.end_s)
        self._thread = threading.Thread(target=self._run, name=f"scenario-{self.scenario.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        clock = self.plant.clock
        for at, label, fn in self.timeline():
            while not self._stop.is_set():
                left = at - self.elapsed()
                if left <= 0:
                    break
                clock.wait(self._stop, min(left, 1.0))
            if self._stop.is_set():
                break
            self._apply(label, fn)
        self.done.set()

    def _apply(self, label: str, fn: Callable[[], None]) -> None:
        t = round(self.elapsed(), 3)
        try:
            fn()
        except Exception as e:  # a scenario step that cannot be done is reported, the run goes on
            self.errors += 1
            with self._lock:
                self.log.append((t, label, f"{type(e).__name__}: {e}"))
            log.error("scenario %s at %.1f s: %s failed: %s", self.scenario.name, t, label, e)
            return
        with self._lock:
            self.log.append((t, label, "ok"))
        log.info("scenario %s at %.1f s: %s", self.scenario.name, t, label)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def happened(self, label_prefix: str) -> list[float]:
        """Times (plant s since start) of the log entries whose label starts with `label_prefix`."""
        with self._lock:
            return [t for t, label, result in self.log if label.startswith(label_prefix) and result == "ok"]

    # -- actions ------------------------------------------------------------------------------------------------
    def context(self) -> Any:
        ctx = self._context() if callable(self._context) else self._context
        if ctx is None:
            raise RuntimeError("no HAL context to act on")
        return ctx

    def _buses(self, key: str, types: tuple[str, ...], bus: str) -> list[Any]:
        """Opened emulated objects `<key>:<bus>` of buses of these types (one bus, or all when `bus` is "")."""
        ctx = self.context()
        names = [bus] if bus else [n for n, t in ctx.buses.items() if t.get("type") in types]
        found = [obj for obj in (ctx.lookup(f"{key}:{n}") for n in names) if obj is not None]
        if not found:
            which = f"bus {bus!r}" if bus else f"any {' or '.join(types)} bus"
            raise LookupError(f"no emulated {key} object for {which} (configured: {', '.join(ctx.buses) or 'none'})")
        return found

    def _hook(self, action: str) -> Hook:
        hook = self.hooks.get(action)
        if hook is None:
            raise LookupError(f"nothing can do {action} here (the agent does not own the broker: a test or harness "
                              "passes a hook)")
        return hook

    def _actions(self, ev: Event) -> tuple[Callable[[], None], Callable[[], None] | None]:
        p, plant = ev.params, self.plant
        a = ev.action
        if a == "shift_start":
            return lambda: plant.schedule("cycle"), None
        if a == "shift_end":
            return lambda: plant.schedule("off"), None
        if a == "schedule":
            return lambda: plant.schedule(p["mode"], p.get("duty")), None
        if a == "stop":
            return lambda: plant.set_running(False), lambda: plant.set_running(True)
        if a == "start":
            return lambda: plant.set_running(True), None
        if a == "bearing_fault":
            return lambda: plant.bearing_fault(None, float(p["grow_s"]), float(p["severity"])), None
        if a == "bearing_replaced":
            return lambda: plant.bearing_fault(severity=0.0), None
        if a == "set":
            return (lambda: plant.overrides.__setitem__(p["signal"], float(p["value"])),
                    lambda: plant.overrides.pop(p["signal"], None))
        if a in ("modbus_silent", "modbus_exception"):
            def servers() -> list[Any]:
                return self._buses("modbus-emulator", ("modbus_tcp", "modbus_rtu"), p["bus"])
            if a == "modbus_silent":
                return (lambda: [s.go_silent(p["unit"]) for s in servers()],
                        lambda: [s.answer(p["unit"]) for s in servers()])
            units = (lambda s: [p["unit"]] if p["unit"] is not None else list(s.devices))
            return (lambda: [s.fail_with(u, int(p["code"])) for s in servers() for u in units(s)],
                    lambda: [s.fail_with(u, None) for s in servers() for u in units(s)])
        if a == "i2c_nack":
            def i2c() -> list[Any]:
                return self._buses("i2c", ("i2c",), p["bus"])
            return (lambda: [b.nack(int(p["address"]), int(p["count"])) for b in i2c()],
                    lambda: [b.nack(int(p["address"]), 0) for b in i2c()])
        if a == "i2c_stuck":
            return (lambda: [b.stick() for b in self._buses("i2c", ("i2c",), p["bus"])],
                    lambda: [b.unstick() for b in self._buses("i2c", ("i2c",), p["bus"])])
        if a == "serial_unplug":
            def links() -> list[Any]:
                return [line.link for line in self._buses("serial", ("serial",), p["bus"]) if line.link is not None]
            return (lambda: [setattr(k, "cut", True) for k in links()],
                    lambda: [setattr(k, "cut", False) for k in links()])
        if a == "sensornode_unplug":
            def nodes() -> list[Any]:
                prefix = "sensornode.emulator."
                found = [node for key, node in self.context().opened(prefix).items()
                         if not p["sensor"] or key == prefix + p["sensor"]]
                if not found:
                    raise LookupError(f"no emulated sensor node {p['sensor'] or ''} is running".replace("  ", " "))
                return found
            return lambda: [n.unplug() for n in nodes()], lambda: [n.plug() for n in nodes()]
        if a == "broker_outage":
            return lambda: self._hook(a)(True), lambda: self._hook(a)(False)
        raise ValueError(f"unknown action {a!r}")  # parse() rejects these; kept for hand-made Events


__all__ = ["Scenario", "Event", "ScenarioRunner", "ScenarioError", "ACTIONS", "load", "names", "parse",
           "parse_duration"]
