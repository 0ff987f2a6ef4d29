"""GPIO drivers through gpiozero's MockFactory (our EmulatedPinFactory subclass), edges stamped with fake ticks."""

from __future__ import annotations

import time

import pytest
from gpiozero.pins.mock import MockFactory

from hal.emulated.gpio import EmulatedGpioBus
from hal.emulated.plant import Plant
from hal.sources import open_source, validate_driver_options


@pytest.fixture
def gpio(make_context, clock):
    plant = Plant(seed=1)
    ctx = make_context({"header": {"type": "gpio", "backend": "emulated"}}, plant=plant)
    bus = ctx.shared("gpio:header", lambda: EmulatedGpioBus("header", plant, clock))

    def make(driver, name, options):
        d = open_source(driver, name, {"emulate_signal": "", **options} if driver != "gpio.output" else options, ctx,
                        bus="header")
        d.open()
        return d
    return bus, clock, make


def test_the_emulated_factory_is_a_mockfactory(gpio):
    bus, _, _ = gpio
    assert isinstance(bus.factory, MockFactory)


def test_state_follows_the_contact_with_pull_up_active_low(gpio):
    bus, clock, make = gpio
    s = make("gpio.state", "running", {"pin": 17})
    pin = bus.pin(17)
    assert pin.pull == "up" and s.poll()[0].value is False  # pulled high: contact open
    pin.drive_at(False, clock())
    assert s.poll()[0].value is True
    pin.drive_at(True, clock())
    assert s.poll()[0].value is False


def test_state_active_high_with_pull_down(gpio):
    bus, clock, make = gpio
    s = make("gpio.state", "estop", {"pin": "GPIO22", "pull": "down"})
    assert s.poll()[0].value is False
    bus.pin(22).drive_at(True, clock())
    assert s.poll()[0].value is True


def press(pin, t0, hold, bounces=(), release_bounces=()):
    """A switch to ground: bounce on press, hold, bounce on release. Times in seconds from t0."""
    pin.drive_at(False, t0)
    for dt in bounces:
        pin.drive_at(True, t0 + dt)
        pin.drive_at(False, t0 + dt + 0.0005)
    pin.drive_at(True, t0 + hold)
    for dt in release_bounces:
        pin.drive_at(False, t0 + hold + dt)
        pin.drive_at(True, t0 + hold + dt + 0.0005)


def test_counter_debounces_press_and_release_bounce(gpio):
    bus, clock, make = gpio
    c = make("gpio.counter", "parts", {"pin": 5, "debounce_ms": 10})
    pin, t = bus.pin(5), clock()
    press(pin, t + 0.1, hold=0.100, bounces=(0.001, 0.002, 0.004), release_bounces=(0.001, 0.003))
    clock.advance(1.0)
    assert c.poll()[0].value == 1
    for k in range(5):  # clean 20 ms pulses
        press(pin, clock() + k * 0.1, hold=0.020)
    clock.advance(1.0)
    assert c.poll()[0].value == 6
    press(pin, clock(), hold=0.004)  # a 4 ms glitch is shorter than the debounce: not a part
    clock.advance(1.0)
    (r,) = c.poll()
    assert r.value == 6 and r.unit == "count" and r.channel == "parts"
    assert c.counters["edges"] > 20


def test_counter_counts_a_held_activation_at_poll_time(gpio):
    bus, clock, make = gpio
    c = make("gpio.counter", "parts", {"pin": 6, "debounce_ms": 50})
    bus.pin(6).drive_at(False, clock())
    assert c.poll()[0].value == 0  # active for 0 ms so far
    clock.advance(0.049)
    assert c.poll()[0].value == 0
    clock.advance(0.002)
    assert c.poll()[0].value == 1
    clock.advance(10)
    assert c.poll()[0].value == 1  # held is one part, not many


def square(pin, t0, hz, seconds):
    n = int(seconds * hz)
    for k in range(n):
        pin.drive_at(False, t0 + k / hz)  # active low
        pin.drive_at(True, t0 + (k + 0.5) / hz)
    return t0 + n / hz


def test_frequency_and_shaft_speed(gpio):
    bus, clock, make = gpio
    f = make("gpio.frequency", "tach", {"pin": 23, "pulses_per_rev": 2, "window_s": 1.0})
    end = square(bus.pin(23), clock(), 49.5, 2.0)
    clock.t = end
    r = {x.channel: x for x in f.poll()}
    assert r["tach.frequency"].value == pytest.approx(49.5, rel=1e-3) and r["tach.frequency"].unit == "Hz"
    assert r["tach.speed"].value == pytest.approx(49.5 / 2 * 60, rel=1e-3) and r["tach.speed"].unit == "rpm"
    clock.advance(3.0)  # no edges for longer than timeout_s: stopped
    assert f.poll()[0].value == 0.0


def test_frequency_slower_than_the_window_uses_the_last_period(gpio):
    bus, clock, make = gpio
    f = make("gpio.frequency", "tach", {"pin": 24, "window_s": 0.5, "timeout_s": 5})
    end = square(bus.pin(24), clock(), 0.8, 4.0)
    clock.t = end + 0.1
    assert f.poll()[0].value == pytest.approx(0.8, rel=1e-3)


def test_frequency_ignores_glitches(gpio):
    bus, clock, make = gpio
    f = make("gpio.frequency", "tach", {"pin": 25, "max_hz": 1000})
    pin, t = bus.pin(25), clock()
    for k in range(100):
        pin.drive_at(False, t + k * 0.01)
        pin.drive_at(True, t + k * 0.01 + 0.0001)
        pin.drive_at(False, t + k * 0.01 + 0.0002)  # a glitch 0.2 ms after the real edge
        pin.drive_at(True, t + k * 0.01 + 0.005)
    clock.t = t + 1.0
    assert f.poll()[0].value == pytest.approx(100.0, rel=1e-3)
    assert f.counters["glitches"] == 100


def test_outputs_must_be_marked_writable(gpio):
    _, errors = validate_driver_options("gpio.output", {"pin": 26})
    assert errors[0][0] == "writable" and "writable = true" in errors[0][1]
    _, errors = validate_driver_options("gpio.output", {"pin": 26, "writable": False})
    assert errors[0][0] == "writable" and "got false" in errors[0][1]
    bus, clock, make = gpio
    lamp = make("gpio.output", "stack_light_red", {"pin": 26, "writable": True})
    assert lamp.poll()[0].value is False and bus.pin(26).state == 0
    lamp.set(True)
    assert lamp.poll()[0].value is True and bus.pin(26).state == 1
    relay = make("gpio.output", "relay", {"pin": 27, "writable": True, "active": "low", "initial": True})
    assert bus.pin(27).state == 0 and relay.poll()[0].value is True


def test_close_is_idempotent_and_frees_the_pin(gpio):
    bus, clock, make = gpio
    s = make("gpio.state", "running", {"pin": 12})
    s.close()
    s.close()
    assert s.poll()[0].quality.value == "bad"
    again = make("gpio.state", "running2", {"pin": 12})  # the pin can be reserved again
    assert again.poll()[0].quality.value == "good"


def test_pin_errors_name_the_key():
    _, errors = validate_driver_options("gpio.state", {"pin": 99})
    assert errors[0][0] == "pin" and "0..53" in errors[0][1]
    _, errors = validate_driver_options("gpio.counter", {"pin": 5, "pull": "sideways"})
    assert errors[0][0] == "pull"


def test_plant_drives_the_running_input(make_context):
    """The emulated stimulus thread drives the pin from the plant (waits for a condition, not for a time)."""
    plant = Plant(seed=2)
    ctx = make_context({"header": {"type": "gpio", "backend": "emulated"}}, plant=plant)
    s = open_source("gpio.state", "running", {"pin": 4}, ctx, bus="header")
    s.open()

    def wait_for(value):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if s.poll()[0].value is value:
                return True
            time.sleep(0.005)
        return False
    assert wait_for(True)
    plant.set_running(False)
    assert wait_for(False)


def test_a_pin_used_twice_is_a_configuration_error(gpio):
    from hal.errors import ConfigurationError
    bus, clock, make = gpio
    first = make("gpio.state", "running", {"pin": 13})  # keep a reference: gpiozero reserves pins weakly
    with pytest.raises(ConfigurationError, match=r"estop.pin: .*13"):
        make("gpio.state", "estop", {"pin": 13})
    assert first.poll()[0].quality.value == "good"
