"""Acquisition under load: does the shipped plant keep every sample while other processes keep the CPUs busy?

Run: python bench/bench_acquisition.py [--duration S] [--quick] [--config FILE] [--loads 0,1,2,io]
                                       [--policies reference,realtime] [--rates 800,400]

For each load and each policy it runs the agent in this process on the configuration (default examples/plant.toml,
every bus emulated, a private Mosquitto on a free loopback port, outbox in a temporary directory) at 1x real time
for `--duration` seconds (default 60; `--quick`: 10 s, loads 0 and 2 only) while the competing load runs:

* `0`: nothing added;  `1`, `2`: that many CPU-bound processes (a Python busy loop each, like `yes >/dev/null`);
* `io`: one I/O-heavy process (writes 1 MiB and fsyncs it, over and over, in the temporary directory).

Policies (agent.realtime): `reference` = RealtimePolicy.off() (Python's 5 ms GIL switch interval, default thread
scheduling: what the agent did before it had a real-time budget); `realtime` = RealtimePolicy() (1 ms switch
interval, SCHED_FIFO readers when permitted, else nice -10, else nothing); `nice` = 1 ms switch interval and
nice -10 readers without trying SCHED_FIFO (what a unit with CAP_SYS_NICE but RestrictRealtime=yes gets);
`switch` = only the 1 ms switch interval (what an unprivileged agent gets); `fifo` = SCHED_FIFO readers with
Python's default switch interval; `process` = each stream sensor read in a process of its own
(agent.acquisition), SCHED_FIFO when permitted; `process-default` = the same without asking for any priority (an
unprivileged agent: systemd's unit without LimitRTPRIO=).

Per stream sensor it reports samples read, samples lost (the driver's count; the emulated chip's own count of what it
really discarded in brackets), the share lost, the worst drain interval against the FIFO's slack (32 entries /
rate), the worst oversleep of the reader thread (scheduler + GIL latency) and how the reader was scheduled. The
machine's load average before and after each run is printed with it: numbers depend on the machine and on what else
runs on it. Not a timed test.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.realtime import RealtimePolicy  # noqa: E402
from tests.mqtt_helpers import MosquittoBroker, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {
    "reference": RealtimePolicy.off(),
    "switch": RealtimePolicy(fifo_priority=None, nice=None),
    "nice": RealtimePolicy(fifo_priority=None),
    "fifo": RealtimePolicy(switch_interval_s=None),
    "realtime": RealtimePolicy(),
    "process": RealtimePolicy(process=True),
    "process-default": RealtimePolicy(process=True, fifo_priority=None, nice=None),
}


def _busy(nice: int = 0) -> None:  # a CPU-bound competitor
    os.nice(nice)
    while True:
        pass


def _io(path: str, nice: int = 0) -> None:  # an I/O-heavy competitor: 1 MiB written and fsynced, again and again
    os.nice(nice)
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        while True:
            f.seek(0)
            f.write(block)
            f.flush()
            os.fsync(f.fileno())


def start_load(load: str, tmp: Path, nice: int = 0) -> list[mp.Process]:
    ctx = mp.get_context("fork")
    if load == "io":
        procs = [ctx.Process(target=_io, args=(str(tmp / "io.bin"), nice), daemon=True)]
    else:
        procs = [ctx.Process(target=_busy, args=(nice,), daemon=True) for _ in range(int(load))]
    for p in procs:
        p.start()
    return procs


def stop_load(procs: list[mp.Process]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(5)


def load_config(path: Path, port: int, rate: int | None, watermark: int | None = None) -> dict[str, Any]:
    raw = tomllib.loads(path.read_text())
    raw["mqtt"] = {"url": f"mqtt://127.0.0.1:{port}"}
    raw["sensors"] = [s for s in raw["sensors"] if s.get("enabled", True)]
    if rate:
        for s in raw["sensors"]:
            if s.get("driver") == "adxl345":
                s["rate_hz"] = rate
                s["window"] = s["hop"] = rate
                s["block_size"] = max(1, rate // 2)
                s["exceed_bus_rate"] = True  # above the data sheet's I2C figure: measured anyway, host side only
            if watermark and s.get("driver") == "adxl345":
                s["watermark"] = watermark
    return raw


def run_once(config_path: Path, policy: str, load: str, duration: float, rate: int | None, port: int,
             tmp: Path, watermark: int | None = None, load_nice: int = 0) -> list[dict[str, Any]]:
    from agent.config import parse
    from agent.pipeline import Pipeline

    config = parse(load_config(config_path, port, rate, watermark), f"{config_path} (bench)")
    state = Path(tempfile.mkdtemp(dir=tmp, prefix="state-"))
    procs = start_load(load, tmp, load_nice)
    load0 = os.getloadavg()[0]
    agent = Pipeline(config, state, realtime=POLICIES[policy])
    try:
        agent.start()
        time.sleep(duration)
    finally:
        agent.stop(drain_s=1.0)
        stop_load(procs)
    load1 = os.getloadavg()[0]
    rows = []
    for r in agent.readers:
        if r.sensor.kind != "stream":
            continue
        src = r.source
        counters = getattr(src, "counters", {})
        samples = int(agent.stats.get(f"samples.{r.sensor.name}", 0))
        lost = int(counters.get("lost_samples", 0))
        chip = None
        dev = getattr(src, "dev", None)  # a process reader's chip lives in its child: it reports `discarded`
        if dev is not None:
            chip = getattr(dev.bus, "chips", {}).get(dev.address)
        rows.append({
            "sensor": r.sensor.name, "rate": src.rate_hz, "policy": policy, "load": load,
            "samples": samples, "lost": lost,
            "discarded": getattr(chip, "discarded", getattr(src, "discarded", None)),
            "share": lost / max(1, samples + lost),
            "worst_ms": (getattr(src, "worst_drain_interval_s", None) or float("nan")) * 1e3,
            "slack_ms": getattr(src, "buffer_slack_s", float("nan")) * 1e3,
            "late_ms": (getattr(src, "worst_wake_late_s", None) or float("nan")) * 1e3,
            "sched": r.scheduling, "loadavg": f"{load0:.1f}->{load1:.1f}",
        })
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per run (default 60)")
    ap.add_argument("--quick", action="store_true", help="10 s per run, loads 0 and 2 only")
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "plant.toml")
    ap.add_argument("--loads", default=None, help="comma-separated: 0, 1, 2 (CPU-bound processes), io")
    ap.add_argument("--policies", default="reference,realtime", help=f"comma-separated: {', '.join(POLICIES)}")
    ap.add_argument("--watermark", type=int, default=None, help="ADXL345 FIFO watermark (default: the config's)")
    ap.add_argument("--load-nice", type=int, default=0, help="run the competitors this much nicer than the agent "
                    "(what the unit's Nice=-N gives the agent against services at nice 0)")
    ap.add_argument("--rates", default="", help="comma-separated ADXL345 rates to try (default: the config's)")
    args = ap.parse_args()
    duration = 10.0 if args.quick and args.duration == 60.0 else args.duration
    loads = (args.loads or ("0,2" if args.quick else "0,1,2,io")).split(",")
    policies = args.policies.split(",")
    for p in policies:
        if p not in POLICIES:
            ap.error(f"--policies: expected some of {', '.join(POLICIES)}, got {p!r}")
    rates = [int(r) for r in args.rates.split(",") if r] or [None]

    os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".venv" / "numba-cache"))
    print(f"# {args.config.name}, {duration:g} s per run at 1x; {os.cpu_count()} CPUs; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; pid {os.getpid()} "
          f"nice {os.nice(0)}; competitors at +{args.load_nice}", flush=True)
    header = (f"{'sensor':<18} {'rate':>5} {'policy':<9} {'load':>4} {'samples':>8} {'lost':>6} {'(chip)':>7} "
              f"{'lost %':>7} {'worst ms':>8} {'slack ms':>8} {'late ms':>7}  {'loadavg':<11} scheduling")
    print(header)
    print("-" * len(header), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-acq-") as d:
        tmp = Path(d)
        port = free_port()
        broker = MosquittoBroker(tmp, port).start()
        try:
            for rate in rates:
                for load in loads:
                    for policy in policies:
                        for row in run_once(args.config, policy, load, duration, rate, port, tmp,
                                                args.watermark, args.load_nice):
                            print(f"{row['sensor']:<18} {row['rate']:>5g} {row['policy']:<9} {row['load']:>4} "
                                  f"{row['samples']:>8} {row['lost']:>6} {str(row['discarded']):>7} "
                                  f"{row['share'] * 100:>6.2f}% {row['worst_ms']:>8.1f} {row['slack_ms']:>8.1f} "
                                  f"{row['late_ms']:>7.1f}  {row['loadavg']:<11} {row['sched']}", flush=True)
        finally:
            broker.stop()
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
