"""Downlink bodies from a fuzzer against a running agent (real broker, emulated GPIO output and Modbus device): every
command is answered, a write outside a register's limits never reaches the device, the agent keeps publishing."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agent_helpers import wait
from tests.agent.test_commands import writable  # noqa: F401 - the fixture

TARGETS = ["plc.speed_setpoint", "plc.cycle_count", "plc", "stack_light", "stack_light.x", "nothing", "", "plc."]
VALUES = st.one_of(
    st.sampled_from([1_000_000, -1, 60, 60.0001, 0, 42.5, 1e308, 2 ** 64, 2 ** 1100, True, False, None, "fast", "",
                     [], {}, [1], "\u0000", float("nan"), float("inf"), -float("inf")]),
    st.integers(), st.floats(), st.text(max_size=8),
)
BODIES = st.one_of(
    st.fixed_dictionaries({"id": st.integers(0, 10 ** 6), "target": st.sampled_from(TARGETS), "value": VALUES}),
    st.dictionaries(st.sampled_from(["id", "target", "value", "sensor", "seconds"]),
                    st.one_of(VALUES, st.sampled_from(TARGETS)), max_size=4),
)


def _encode(body) -> bytes:
    return json.dumps(body).encode()  # NaN and Infinity go out as Python's json writes them; the agent reads them


def _device(agent):
    return next(r.source for r in agent.readers if r.sensor.name == "plc")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(name=st.sampled_from(["set", "set", "set", "ping", "capture"]), body=BODIES)
def test_any_downlink_body_is_answered_and_limits_hold(writable, name, body) -> None:  # noqa: F811
    agent, console = writable
    dev = _device(agent)
    writes = dev.counters.get("writes", 0)
    r = console.send(name, _encode(body))
    assert r is not None, ("every command is answered", name, body)
    assert r["command"] == name and isinstance(r["ok"], bool)
    if not r["ok"]:
        assert r["error"]["code"] and r["error"]["message"], r
        assert dev.counters.get("writes", 0) == writes, ("a refused set wrote nothing", body, r)
    elif name == "set":
        assert 0 <= r["result"]["value"] <= 60 or r["result"]["target"] == "stack_light", r
    assert agent.commands is not None and agent.commands._thread is not None and agent.commands._thread.is_alive()


def test_out_of_range_is_refused_before_any_write(writable) -> None:  # noqa: F811
    agent, console = writable
    dev = _device(agent)
    before = dev.bus.read("holding", 10, 1, 1)
    for value in (1_000_000, 60.5, -0.1, 2 ** 1100, float("nan")):
        r = console.send("set", _encode({"id": 1, "target": "plc.speed_setpoint", "value": value}))
        assert r is not None and r["error"]["code"] == "out_of_range", (value, r)
    assert dev.counters.get("writes", 0) == 0
    assert dev.bus.read("holding", 10, 1, 1) == before  # the device holds what it held (never a clamped 65535)
    n = len(console.records)
    assert wait(lambda: len(console.records) > n + 2), "the agent keeps publishing"
