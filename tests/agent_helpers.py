"""Helpers to run the agent in-process against a real broker with a small, fast emulated config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent.config import Config, parse
from agent.pipeline import Pipeline


def small_config(port: int, agent_id: str = "t1", **outbox: Any) -> Config:
    """A fast emulated machine: a 2-axis accelerometer (1 kHz, 0.25 s windows) and a probe read every 0.1 s."""
    raw = {
        "agent": {"id": agent_id},
        "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
                 "keepalive_s": 5},
        "outbox": {"commit_interval_ms": 50, **outbox},
        "sensors": [
            {"name": "vib", "driver": "emulated.vibration", "rate_hz": 1000, "block_size": 125, "axes": ["x", "y"],
             "window": 250, "hop": 250},
            {"name": "temp", "driver": "emulated.temperature", "interval_s": 0.1},
        ],
    }
    return parse(raw, "<test>", emulate=True)


def run_agent(config: Config, state_dir: Path) -> Pipeline:
    agent = Pipeline(config, state_dir)
    agent.start()
    return agent


def wait(predicate: Any, timeout: float = 20.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
