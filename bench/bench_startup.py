"""Start-up and footprint of the real agent: prints a table; not a test.

    .venv/bin/python bench/bench_startup.py [--repeats 5] [--cold 2] [--rss-s 20] [--skip-rss]

Start-up: runs the real `edge-agent run` (the built-in emulated demo: a 1600 Hz accelerometer with 1 s windows)
as a subprocess against a local Mosquitto on a free port and times process start → first `features` message of
`spindle_vibration` on the broker. The reference, in the same run and interleaved with it (A B A B ...), is
`python -c "import numpy"` (process start → exit). Warm: a Numba cache filled by `edge-agent warmup` first; cold:
an empty cache directory per start. Reports min and median of the repeats, and each as a multiple of the
reference's median.

Footprint (`--rss-s`): runs the demo, and a Modbus-only config (an emulated SDM630 energy meter over Modbus TCP, no
stream sensor), for that many seconds each, sampling VmRSS every 0.5 s; prints the steady RSS (median of the last
half), the peak (VmHWM), and the anonymous/file split (smaps_rollup) at the end, plus the heaviest packages
loaded (from `sys.modules` of a probe run with the same config).

The machine may be shared: the ratios within one run are the figures to quote, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from tests.mqtt_helpers import MosquittoBroker  # noqa: E402

PY = sys.executable
_EXE = Path(PY).parent / "edge-agent"
AGENT = [str(_EXE)] if _EXE.exists() else [PY, "-m", "agent"]  # the installed console script, as users run it

MODBUS_ONLY = """\
[agent]
id = "meter-only"

[mqtt]
url = "mqtt://localhost:1883"

[buses.meter]
type = "modbus_tcp"
backend = "emulated"

[[sensors]]
name = "energy"
driver = "modbus"
bus = "meter"
unit = 1
profile = "sdm630"
include = ["voltage_l1", "current_l1", "current_l2", "current_l3", "power_total", "power_factor_total",
           "frequency", "energy_import"]
interval_s = 1
"""


class FirstMessage:
    """Subscribes to one topic and records the monotonic time of the first message after `arm()`."""

    def __init__(self, port: int, topic: str) -> None:
        self.topic = topic
        self.at: float | None = None
        self.event = threading.Event()
        self._armed = False
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-startup-{os.getpid()}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"could not subscribe to {topic} on port {port}")

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self._armed and self.at is None and not msg.retain:
            self.at = time.monotonic()
            self.event.set()

    def arm(self) -> None:
        self.at = None
        self.event.clear()
        self._armed = True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def time_import_numpy() -> float:
    t0 = time.monotonic()
    subprocess.run([PY, "-c", "import numpy"], check=True)
    return time.monotonic() - t0


def time_first_features(port: int, cache: Path, work: Path, sub: FirstMessage, timeout: float = 120.0,
                        source: Path | None = None) -> float:
    """Seconds from starting `edge-agent run` to its first features record on the broker. `source`: run the
    agent package of another source tree (an older checkout, for an A/B comparison) with this venv."""
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    cmd = AGENT
    if source is not None:
        env["PYTHONPATH"] = str(source)
        cmd = [PY, "-m", "agent"]
    sub.arm()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd + ["run", "--broker", f"mqtt://127.0.0.1:{port}", "--state-dir", str(state),
                                     "--drain-s", "0.5"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(work / "agent.log", "ab"), cwd=work)
    try:
        if not sub.event.wait(timeout):
            raise RuntimeError(f"no features record within {timeout:.0f} s (see {work / 'agent.log'})")
        assert sub.at is not None
        return sub.at - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(state, ignore_errors=True)


def warm_cache(cache: Path) -> None:
    subprocess.run(AGENT + ["warmup", "--cache-dir", str(cache)], check=True, stdout=subprocess.DEVNULL)


def summary(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def bench_startup(repeats: int, cold: int, work: Path, baseline: Path | None = None) -> None:
    broker = MosquittoBroker(work).start()
    sub = FirstMessage(broker.port, "edge/demo/features/spindle_vibration")
    warm = work / "numba-warm"
    warm_cache(warm)
    numpy_s: list[float] = []
    warm_s: list[float] = []
    cold_s: list[float] = []
    base_s: list[float] = []
    try:
        for i in range(max(repeats, cold)):  # interleaved: numpy, warm agent, (cold agent), numpy, ...
            numpy_s.append(time_import_numpy())
            if i < repeats:
                warm_s.append(time_first_features(broker.port, warm, work, sub))
                if baseline is not None:
                    base_s.append(time_first_features(broker.port, warm, work, sub, source=baseline))
            if i < cold:
                cache = work / f"numba-cold-{i}"
                cold_s.append(time_first_features(broker.port, cache, work, sub, timeout=600))
                shutil.rmtree(cache, ignore_errors=True)
            print(f"  round {i + 1}: import numpy {numpy_s[-1]:.3f} s"
                  + (f", warm {warm_s[-1]:.3f} s" if i < repeats else "")
                  + (f", baseline warm {base_s[-1]:.3f} s" if i < repeats and base_s else "")
                  + (f", cold {cold_s[-1]:.3f} s" if i < cold else ""), flush=True)
    finally:
        sub.close()
        broker.stop()
    ref_min, ref_med = summary(numpy_s)
    print(f"\nstart-up: process start -> first features record of the demo (1 s windows) on the broker, "
          f"{repeats} warm / {cold} cold repeats, interleaved with `python -c 'import numpy'`")
    print(f"  {'':<34} {'min s':>8} {'median s':>9} {'median / numpy':>15}")
    rows = [("python -c 'import numpy'", numpy_s), ("edge-agent run, warm Numba cache", warm_s)]
    if base_s:
        rows.append((f"baseline tree, warm ({baseline.name})", base_s))  # type: ignore[union-attr]
    if cold_s:
        rows.append(("edge-agent run, cold Numba cache", cold_s))
    for name, vals in rows:
        lo, med = summary(vals)
        print(f"  {name:<34} {lo:8.3f} {med:9.3f} {med / ref_med:14.1f}x")


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in (f"/proc/{pid}/status", f"/proc/{pid}/smaps_rollup"):
        try:
            with open(name) as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    parts = rest.split()
                    if len(parts) == 2 and parts[1] == "kB":
                        out[key] = int(parts[0])
        except OSError:
            pass
    return out


PROBE = """
import sys, runpy, threading, json, collections
sys.argv = ["edge-agent"] + sys.argv[1:]
def dump():
    tops = collections.Counter(m.split(".")[0] for m in list(sys.modules))
    print("MODULES " + json.dumps(sorted(tops.items(), key=lambda kv: -kv[1])), file=sys.stderr, flush=True)
threading.Timer(float(__import__("os").environ["PROBE_AT"]), dump).start()
from agent.cli import main
sys.exit(main())
"""


def footprint(name: str, config: Path | None, seconds: float, port: int, cache: Path, work: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PROBE_AT=str(seconds * 0.5))
    args = ["run", "--broker", f"mqtt://127.0.0.1:{port}", "--state-dir", str(state), "--drain-s", "0.5"]
    if config is not None:
        args += ["--config", str(config)]
    log = work / f"footprint-{name}.log"
    proc = subprocess.Popen([PY, "-c", PROBE] + args, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                            cwd=work)
    samples: list[int] = []
    t0 = time.monotonic()
    last: dict[str, int] = {}
    while time.monotonic() - t0 < seconds and proc.poll() is None:
        time.sleep(0.5)
        last = _status(proc.pid) or last
        if "VmRSS" in last:
            samples.append(last["VmRSS"])
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    shutil.rmtree(state, ignore_errors=True)
    if not samples:
        print(f"  {name}: no samples (see {log})")
        return
    steady = statistics.median(samples[len(samples) // 2:]) / 1024
    mods = ""
    for line in log.read_text().splitlines():
        if line.startswith("MODULES "):
            tops = json.loads(line[len("MODULES "):])
            mods = ", ".join(f"{m} {n}" for m, n in tops[:10])
    anon = last.get("Anonymous", 0) / 1024
    file = last.get("Rss", 0) / 1024 - anon
    print(f"  {name:<28} steady {steady:6.1f} MB  peak {last.get('VmHWM', 0) / 1024:6.1f} MB  "
          f"anon {anon:5.1f} MB  file {file:5.1f} MB (at the end)")
    if mods:
        print(f"  {'':<28} modules loaded (top packages by module count): {mods}")


def bench_footprint(seconds: float, work: Path) -> None:
    broker = MosquittoBroker(work).start()
    cache = work / "numba-warm"
    if not cache.exists():
        warm_cache(cache)
    meter = work / "modbus-only.toml"
    meter.write_text(MODBUS_ONLY)
    print(f"\nfootprint: RSS of `edge-agent run` over {seconds:.0f} s (sampled every 0.5 s; steady = median of the "
          "last half)")
    try:
        footprint("demo (built-in, emulated)", None, seconds, broker.port, cache, work)
        footprint("Modbus-only (emulated TCP)", meter, seconds, broker.port, cache, work)
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="warm start-ups (default 5)")
    ap.add_argument("--cold", type=int, default=2, help="cold start-ups (default 2; each compiles every kernel)")
    ap.add_argument("--rss-s", type=float, default=20.0, help="seconds per footprint run (default 20)")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="also time (interleaved, warm) the agent of another source tree, e.g. an export of main")
    ap.add_argument("--skip-startup", action="store_true")
    args = ap.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    work = Path(tempfile.mkdtemp(prefix="bench-startup-", dir=ROOT))
    try:
        if not args.skip_startup:
            bench_startup(args.repeats, args.cold, work, args.baseline.resolve() if args.baseline else None)
        if not args.skip_rss:
            bench_footprint(args.rss_s, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} at end (a busy machine inflates absolute times; compare ratios)")


if __name__ == "__main__":
    main()
