"""Start-up and footprint of the real agent: prints a table; not a test.

    .venv/bin/python bench/bench_startup.py [--repeats 5] [--cold 2] [--rss-s 20] [--skip-rss]

Start-up: runs the real `edge-agent run` (the console script, as users and systemd run it) as a subprocess against a
local Mosquitto on a free port and times exec → the first `features` message of its accelerometer on the broker.
Two configurations: the built-in emulated demo (11 sensors, an 800 Hz ADXL345 with 1 s windows, the 'demo'
scenario), and one emulated ADXL345 alone (800 Hz, 1 s windows). The reference, in the same run and interleaved with
them (A B C A B C ...), is `python -c "import numpy"` (exec → exit). Warm: a Numba cache filled by
`edge-agent warmup` first, and the agent's bytecode written (as `pip install` does); cold: an empty cache directory
per start (demo only). Reports min and median of the
repeats, each as a multiple of the reference's median, and splits the agent's time using the record itself (its
`ts` is the window's first sample): exec → first sample (interpreter, imports, configuration, driver), the window
(1 s of samples; physics), window end → on the broker (the rest of the kernel load if it was still running,
computing, committing, publishing).

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
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
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


ONE_STREAM = """\
[agent]
id = "one-stream"

[mqtt]
url = "mqtt://localhost:1883"

[buses.i2c1]
type = "i2c"
backend = "emulated"
baudrate = 400000

[[sensors]]
name = "vibration"
driver = "adxl345"
bus = "i2c1"
address = 0x53
rate_hz = 800
range_g = 16
block_size = 400
watermark = 16
window = 800                 # 1 s windows
hop = 800
"""


class FirstMessage:
    """Subscribes to topics and records the monotonic time and body of the first message after `arm(topic)`."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.topic = ""
        self.at: float | None = None
        self.body: bytes = b""
        self.event = threading.Event()
        self._armed = False
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-startup-{os.getpid()}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"could not subscribe to {topics} on port {port}")

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self._armed and self.at is None and not msg.retain and msg.topic == self.topic:
            self.at = time.monotonic()
            self.body = msg.payload
            self.event.set()

    def arm(self, topic: str) -> None:
        self.topic = topic
        self.at = None
        self.body = b""
        self.event.clear()
        self._armed = True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _first_sample_ns(body: bytes) -> int | None:
    """The wall-clock time of the record's `ts` (the window's first sample), from a JSON body."""
    try:
        rec = json.loads(body)
        rec = rec[0] if isinstance(rec, list) else rec
        ts = datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        return int(ts.timestamp() * 1000) * 1_000_000
    except (ValueError, KeyError, TypeError, IndexError):
        return None


@dataclass
class Start:
    total_s: float  # exec -> the first features message on the broker
    sample_s: float  # exec -> the first sample of that record's window (ms resolution)
    kernels_s: float  # process start -> kernels ready (the agent's log line; 10 ms resolution)


def _kernels_ready_s(log: Path) -> float:
    m = re.search(r"feature kernels ready in [0-9.]+ s \(([0-9.]+) s after the process started\)",
                  log.read_text(errors="replace"))
    return float(m.group(1)) if m else float("nan")

def warm_page_cache() -> None:
    """Read LLVM's shared library back into the page cache. A stopped agent leaves it out: it pages the library out
    of its resident set once its kernels are ready (`agent.processing.release_compiler_pages`), which evicts the
    pages from the page cache when no other process maps them, so the next start reads ~70 MB from disk (seconds on
    an SD card). Every start here begins with it cached, so that starts compare alike; the README gives the figure
    for a restart right after a stop."""
    import importlib.util

    spec = importlib.util.find_spec("llvmlite")
    if spec is None or not spec.submodule_search_locations:
        return
    for lib in Path(list(spec.submodule_search_locations)[0]).glob("binding/*.so"):
        with open(lib, "rb") as f:
            while f.read(8 << 20):
                pass


def time_import_numpy() -> float:
    t0 = time.monotonic()
    subprocess.run([PY, "-c", "import numpy"], check=True)
    return time.monotonic() - t0


def time_first_features(port: int, cache: Path, work: Path, sub: FirstMessage, topic: str,
                        config: Path | None = None, timeout: float = 120.0, source: Path | None = None) -> Start:
    """Exec of `edge-agent run` -> its first features record on `topic`. `source`: run the agent package of another
    source tree (an older checkout, for an A/B comparison) with this venv."""
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    cmd = AGENT
    if source is not None:
        env["PYTHONPATH"] = str(source)
        cmd = [PY, "-m", "agent"]
    args = ["run", "--broker", f"mqtt://127.0.0.1:{port}", "--state-dir", str(state), "--drain-s", "0.5"]
    if config is not None:
        args += ["--config", str(config)]
    warm_page_cache()
    sub.arm(topic)
    t0_wall = time.time_ns()
    t0 = time.monotonic()
    log = state / "agent.log"
    proc = subprocess.Popen(cmd + args, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), cwd=work)
    try:
        if not sub.event.wait(timeout):
            raise RuntimeError(f"no features record within {timeout:.0f} s:\n{log.read_text(errors='replace')}")
        assert sub.at is not None
        first = _first_sample_ns(sub.body)
        total = sub.at - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    try:
        return Start(total, (first - t0_wall) / 1e9 if first is not None else float("nan"), _kernels_ready_s(log))
    finally:
        shutil.rmtree(state, ignore_errors=True)


def compile_bytecode(tree: Path) -> None:
    """Write the agent's bytecode, as `pip install` does at install time: with PYTHONDONTWRITEBYTECODE set (CI
    sandboxes) an editable checkout would otherwise compile every module from source at every start (~0.1 s)."""
    subprocess.run([PY, "-m", "compileall", "-q", str(tree / "agent"), str(tree / "hal")], check=True,
                   stdout=subprocess.DEVNULL)


def warm_cache(cache: Path, source: Path | None = None) -> None:
    """Fill `cache` as `edge-agent warmup` does at install. Numba keys its cache by the kernels' source path: a
    `source` tree (the baseline) needs its own warm-up, else its first start compiles."""
    env = dict(os.environ)
    cmd = AGENT
    if source is not None:
        env["PYTHONPATH"] = str(source)
        cmd = [PY, "-m", "agent"]
    # cwd: not the checkout, whose agent/ `python -m` would find before PYTHONPATH's
    subprocess.run(cmd + ["warmup", "--cache-dir", str(cache)], check=True, stdout=subprocess.DEVNULL, env=env,
                   cwd=cache.parent)


def summary(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


DEMO_TOPIC = "edge/demo/features/spindle_vibration"
ONE_TOPIC = "edge/one-stream/features/vibration"
WINDOW_S = 1.0  # both configurations: 800 samples at 800 Hz


def bench_startup(repeats: int, cold: int, work: Path, baseline: Path | None = None) -> None:
    broker = MosquittoBroker(work).start()
    sub = FirstMessage(broker.port, [DEMO_TOPIC, ONE_TOPIC])
    one = work / "one-stream.toml"
    one.write_text(ONE_STREAM)
    warm = work / "numba-warm"
    warm_cache(warm)
    compile_bytecode(ROOT)
    if baseline is not None:
        compile_bytecode(baseline)
        warm_cache(warm, source=baseline)
    numpy_s: list[float] = []
    runs: dict[str, list[Start]] = {}
    names = {"demo": "edge-agent run (demo), warm cache", "one": "edge-agent run (one ADXL345), warm",
             "base": "baseline tree (demo), warm", "cold": "edge-agent run (demo), cold cache"}
    try:
        for i in range(max(repeats, cold)):  # interleaved: numpy, demo, one stream, (baseline), (cold), numpy, ...
            numpy_s.append(time_import_numpy())
            line = [f"import numpy {numpy_s[-1]:.3f} s"]
            if i < repeats:
                todo = [("demo", dict(topic=DEMO_TOPIC)), ("one", dict(topic=ONE_TOPIC, config=one))]
                if baseline is not None:
                    todo.append(("base", dict(topic=DEMO_TOPIC, source=baseline)))
                for key, kw in todo:
                    r = time_first_features(broker.port, warm, work, sub, **kw)  # type: ignore[arg-type]
                    runs.setdefault(key, []).append(r)
                    line.append(f"{key} {r.total_s:.3f} s (first sample {r.sample_s:.3f}, kernels {r.kernels_s:.2f})")
            if i < cold:
                cache = work / f"numba-cold-{i}"
                r = time_first_features(broker.port, cache, work, sub, DEMO_TOPIC, timeout=600)
                runs.setdefault("cold", []).append(r)
                line.append(f"cold {r.total_s:.3f} s")
                shutil.rmtree(cache, ignore_errors=True)
            print(f"  round {i + 1}: " + ", ".join(line), flush=True)
    finally:
        sub.close()
        broker.stop()
    ref_min, ref_med = summary(numpy_s)
    print(f"\nstart-up: exec -> first features record on the broker (1 s windows), {repeats} warm / {cold} cold "
          f"repeats, interleaved with `python -c 'import numpy'`")
    print(f"  {'':<36} {'min s':>7} {'median s':>9} {'median/numpy':>13}   {'exec->1st sample':>16} "
          f"{'window':>6} {'window end->broker':>18} {'exec->kernels ready':>19}  (medians)")
    print(f"  {'python -c import numpy':<36} {ref_min:7.3f} {ref_med:9.3f} {1.0:12.1f}x")
    for key in ("demo", "one", "base", "cold"):
        if key not in runs:
            continue
        totals = [r.total_s for r in runs[key]]
        lo, med = summary(totals)
        sample = statistics.median(r.sample_s for r in runs[key])
        after = statistics.median(r.total_s - r.sample_s - WINDOW_S for r in runs[key])
        kernels = statistics.median(r.kernels_s for r in runs[key])
        print(f"  {names[key]:<36} {lo:7.3f} {med:9.3f} {med / ref_med:12.1f}x   {sample:16.3f} {WINDOW_S:6.1f} "
              f"{after:18.3f} {kernels:19.2f}")


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
