"""Runs inside the field lab's qemu guest (Debian 12's own kernel under TCG), started by the edgelab-*.service units.

Owns: what the guest reports to the host, one line each on the serial console, `EDGELAB <tag> <json>`. It reads the
outbox (as the service user, so no root-owned -wal/-shm is left behind) and, in the i2c test, loads i2c-stub and
its register images. It must not touch the project's code or change the outbox's contents.

    edgelab.py check     outbox integrity and per-stream seq state, before edge-agent.service starts
    edgelab.py final     let the agent drain to the broker, stop it cleanly, export what is left, power off
    edgelab.py i2c       i2c-stub chips read through the real smbus2 backend; power off
    edgelab.py soak S    watch the unit under its MemoryMax for S seconds: memory.events, restarts; power off
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

DB = "/var/lib/edge-agent/outbox.db"
PY = "/opt/edge-agent/venv/bin/python"
EA = "/opt/edge-agent/venv/bin/edge-agent"


def emit(tag: str, obj: object) -> None:
    line = f"EDGELAB {tag} {json.dumps(obj, sort_keys=True)}"
    print(line, flush=True)
    try:
        with open("/dev/ttyS0", "w") as tty:  # straight to the host, whatever the journal does
            tty.write(line + "\n")
    except OSError:
        pass


def outbox_state() -> dict:
    if not os.path.exists(DB):
        return {"outbox": None}
    con = sqlite3.connect(DB, timeout=60)
    try:
        integrity = [r[0] for r in con.execute("PRAGMA integrity_check")]
        streams = {s: {"next_seq": n} for s, _k, n in con.execute("SELECT stream, kind, next_seq FROM streams")}
        for s, lo, hi, n in con.execute("SELECT stream, MIN(seq), MAX(seq), COUNT(*) FROM records GROUP BY stream"):
            streams.setdefault(s, {}).update(min=lo, max=hi, count=n)
        return {"outbox": DB, "integrity": integrity, "streams": streams}
    finally:
        con.close()


def cmd_check() -> None:
    if os.getuid() == 0:  # open the database as the service user: WAL recovery must not leave root-owned files
        os.execvp("runuser", ["runuser", "-u", "edge-agent", "--", PY, __file__, "check"])
    emit("check", outbox_state())


def cmd_final(drain_s: float = 120.0) -> None:
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline:  # drain: wait for the outbox to empty out (the agent keeps adding)
        time.sleep(5)
        out = subprocess.run([EA, "status", "--json"], capture_output=True, text=True)
        try:
            depth = json.loads(out.stdout).get("outbox", {}).get("depth")
        except (ValueError, AttributeError):
            depth = None
        if depth is not None and depth < 50:
            break
    stop = subprocess.run(["systemctl", "stop", "edge-agent"], capture_output=True, text=True)
    show = subprocess.run(["systemctl", "show", "-p", "ExecMainStatus", "-p", "Result", "--value", "edge-agent"],
                          capture_output=True, text=True).stdout.split()
    exp = subprocess.run(["runuser", "-u", "edge-agent", "--", EA, "buffer", "export", "--state-dir",
                          "/var/lib/edge-agent"], capture_output=True, text=True)
    left = [json.loads(line) for line in exp.stdout.splitlines() if line.strip().startswith("{")]
    emit("final", {"stop_rc": stop.returncode, "main_status": show, "unsent": left, "export_rc": exp.returncode,
                   "export_err": exp.stderr[-500:]})
    subprocess.run(["systemctl", "--no-block", "poweroff"])


# -- i2c: register images in i2c-stub, read through the real smbus2 backend --------------------------------------
# BME280 compensation words: temperature and pressure from the worked example of Bosch's BMP280 data sheet
# (BST-BMP280-DS001, section 3.12: dig_T1..T3, dig_P1..P9, adc_T = 519888 -> 25.08 degC, adc_P = 415148 -> 100653.27
# Pa); the BME280 uses the same formulas. Humidity words from a real BME280; the expectation is computed below with
# the BME280 data sheet's floating-point formula (BST-BME280-DS002, section 8.1), not with the driver's code.
T = (27504, 26435, -1000)
P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
H1, H2, H3, H4, H5, H6 = 75, 362, 0, 313, 50, 30
ADC_T, ADC_P, ADC_H = 519888, 415148, 30000


def bme280_image() -> dict[int, int]:
    img: dict[int, int] = {0xD0: 0x60, 0xF3: 0x00}
    words = [(T[0], False), (T[1], True), (T[2], True), (P[0], False)] + [(p, True) for p in P[1:]]
    for i, (v, _signed) in enumerate(words):
        v &= 0xFFFF
        img[0x88 + 2 * i] = v & 0xFF
        img[0x89 + 2 * i] = v >> 8
    img[0xA1] = H1
    img[0xE1], img[0xE2] = H2 & 0xFF, (H2 >> 8) & 0xFF
    img[0xE3] = H3
    img[0xE4] = (H4 >> 4) & 0xFF
    img[0xE5] = (H4 & 0x0F) | ((H5 & 0x0F) << 4)
    img[0xE6] = (H5 >> 4) & 0xFF
    img[0xE7] = H6 & 0xFF
    img[0xF7], img[0xF8], img[0xF9] = ADC_P >> 12, (ADC_P >> 4) & 0xFF, (ADC_P & 0x0F) << 4
    img[0xFA], img[0xFB], img[0xFC] = ADC_T >> 12, (ADC_T >> 4) & 0xFF, (ADC_T & 0x0F) << 4
    img[0xFD], img[0xFE] = ADC_H >> 8, ADC_H & 0xFF
    return img


def datasheet_expectation() -> dict[str, float]:
    """BMP280/BME280 data sheet floating-point compensation (double precision), independent of hal/drivers."""
    var1 = (ADC_T / 16384.0 - T[0] / 1024.0) * T[1]
    var2 = ((ADC_T / 131072.0 - T[0] / 8192.0) * (ADC_T / 131072.0 - T[0] / 8192.0)) * T[2]
    t_fine = var1 + var2
    temp = t_fine / 5120.0
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * P[5] / 32768.0
    var2 = var2 + var1 * P[4] * 2.0
    var2 = var2 / 4.0 + P[3] * 65536.0
    var1 = (P[2] * var1 * var1 / 524288.0 + P[1] * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * P[0]
    p = 1048576.0 - ADC_P
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = P[8] * p * p / 2147483648.0
    var2 = p * P[7] / 32768.0
    p = p + (var1 + var2 + P[6]) / 16.0
    h = t_fine - 76800.0
    h = (ADC_H - (H4 * 64.0 + H5 / 16384.0 * h)) * (H2 / 65536.0 * (1.0 + H6 / 67108864.0 * h * (
        1.0 + H3 / 67108864.0 * h)))
    h = h * (1.0 - H1 * h / 524288.0)
    h = min(max(h, 0.0), 100.0)
    return {"temperature": temp, "pressure": p / 100.0, "humidity": h}


def cmd_i2c() -> None:
    report: dict = {"uname": os.uname().release}
    try:
        for m in (["i2c-dev"], ["i2c-stub", "chip_addr=0x76,0x40"]):
            subprocess.run(["modprobe", *m], check=True, capture_output=True, text=True)
        adapters = [a for a in os.listdir("/sys/class/i2c-adapter")
                    if open(f"/sys/class/i2c-adapter/{a}/name").read().strip() == "SMBus stub driver"]
        bus = int(adapters[0].split("-")[1])
        report["bus"] = bus
        for reg, val in sorted(bme280_image().items()):  # loaded with i2c-tools, not with the code under test
            subprocess.run(["i2cset", "-y", str(bus), "0x76", hex(reg), hex(val)], check=True)
        os.chown(f"/dev/i2c-{bus}", 0, int(subprocess.run(["getent", "group", "i2c"], capture_output=True,
                                                          text=True).stdout.split(":")[2]))
        os.chmod(f"/dev/i2c-{bus}", 0o660)
        report["expected"] = datasheet_expectation()
        # the drivers through the HAL's real smbus2 backend, the way `edge-agent read` opens them, as the service user
        # with the unit's supplementary groups and device policy
        conf = "/etc/edge-agent/i2c-lab.toml"
        with open(conf, "w") as f:
            f.write(f"""[mqtt]\nurl = "mqtt://localhost:1883"\n\n[buses.stub]\ntype = "i2c"\nbus = {bus}\n
[[sensors]]\nname = "bme"\ndriver = "bme280"\nbus = "stub"\naddress = 0x76\ninterval_s = 1.0\n
[[sensors]]\nname = "absent"\ndriver = "bme280"\nbus = "stub"\naddress = 0x77\ninterval_s = 1.0\n
[[sensors]]\nname = "ina"\ndriver = "ina219"\nbus = "stub"\naddress = 0x40\ninterval_s = 1.0\n""")
        os.chmod(conf, 0o644)
        code = f"""
import json
from agent.cli.common import load_config
from hal.sources import HalContext, open_source
cfg = load_config({conf!r}, False, quiet=True)
out = {{}}
for sensor in cfg.sensors:
    ctx = HalContext(emulate=False, buses=cfg.buses)
    try:
        src = open_source(sensor.driver, sensor.name, sensor.options, ctx, bus=sensor.bus)
        src.open()
        out[sensor.name] = {{r.channel: [r.value, str(r.quality), r.error] for r in src.poll()}}
        src.close()
    except Exception as e:
        out[sensor.name] = {{"error": type(e).__name__ + ": " + str(e)}}
    finally:
        ctx.close()
print(json.dumps(out))
"""
        sg = subprocess.run(["systemctl", "show", "-p", "SupplementaryGroups", "--value", "edge-agent"],
                            capture_output=True, text=True).stdout.strip() or "i2c"
        run = subprocess.run(["systemd-run", "--quiet", "--wait", "--pipe", "-p", "User=edge-agent",
                              "-p", f"SupplementaryGroups={sg}", "-p", "DevicePolicy=closed",
                              "-p", "DeviceAllow=char-i2c rw", PY, "-c", code], capture_output=True, text=True)
        report["rc"] = run.returncode
        report["stderr"] = run.stderr[-2000:]
        report["read"] = json.loads(run.stdout.strip().splitlines()[-1]) if run.stdout.strip() else None
    except Exception as e:  # noqa: BLE001 - everything goes to the host, which decides
        report["error"] = f"{type(e).__name__}: {e}"
    emit("i2c", report)
    subprocess.run(["systemctl", "--no-block", "poweroff"])


def cmd_soak(seconds: float) -> None:
    cg = subprocess.run(["systemctl", "show", "-p", "ControlGroup", "--value", "edge-agent"],
                        capture_output=True, text=True).stdout.strip()
    path = f"/sys/fs/cgroup{cg}"
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < seconds:
        time.sleep(30)
        try:
            cur = int(open(f"{path}/memory.current").read())
            peak = int(open(f"{path}/memory.peak").read()) if os.path.exists(f"{path}/memory.peak") else None
        except OSError:
            cur = peak = None
        samples.append({"t": round(time.monotonic() - t0), "current": cur, "peak": peak})
        emit("soak-sample", samples[-1])
    def read_kv(p: str) -> dict:
        try:
            return dict((k, int(v)) for k, v in (line.split() for line in open(p)))
        except OSError:
            return {}
    props = subprocess.run(["systemctl", "show", "-p", "NRestarts", "-p", "ActiveState", "-p", "MainPID",
                            "-p", "MemoryMax", "-p", "MemoryHigh", "edge-agent"], capture_output=True,
                           text=True).stdout
    emit("soak", {"seconds": seconds, "memory_events": read_kv(f"{path}/memory.events"),
                  "cpu_stat": read_kv(f"{path}/cpu.stat"), "unit": props.split(),
                  "memory_max": open(f"{path}/memory.max").read().strip() if os.path.exists(f"{path}/memory.max")
                  else None, "samples": samples,
                  "cgroup2": os.path.exists("/sys/fs/cgroup/cgroup.controllers")})
    subprocess.run(["systemctl", "--no-block", "poweroff"])


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "check":
        cmd_check()
    elif what == "final":
        cmd_final()
    elif what == "i2c":
        cmd_i2c()
    elif what == "soak":
        cmd_soak(float(sys.argv[2]))
    else:
        sys.exit(f"edgelab.py: unknown command {what!r}")
